//! Progress on stderr: bars on a terminal, periodic plain lines otherwise (logs, CI, pipes),
//! or nothing. Chosen once per process by `--progress`.

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Bars when stderr is a terminal, plain lines otherwise.
    Auto,
    /// Bars (drawn only on a terminal).
    Bar,
    /// A plain line at the start, at most every 10 seconds while work moves, and at the end.
    Plain,
    /// Nothing.
    None,
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// Sets the mode for the process (first call wins); `auto` is resolved here.
pub fn set_mode(m: Mode) {
    let m = match m {
        Mode::Auto if std::io::stderr().is_terminal() => Mode::Bar,
        Mode::Auto => Mode::Plain,
        m => m,
    };
    let _ = MODE.set(m);
}

fn mode() -> Mode {
    *MODE.get().unwrap_or(&Mode::Bar)
}

/// Seconds between plain lines.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

struct Plain {
    start: Instant,
    last: Option<Instant>,
    last_done: usize,
}

enum State {
    Idle,
    Bar(ProgressBar),
    Plain(Plain),
}

/// One measured activity, created on first update so instant work shows nothing.
pub struct Progress {
    unit: &'static str,
    state: Mutex<State>,
}

fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

impl Progress {
    /// An activity counting `unit`s.
    pub fn new(unit: &'static str) -> Progress {
        Progress { unit, state: Mutex::new(State::Idle) }
    }

    /// Reports `done` of `total`.
    pub fn update(&self, done: usize, total: usize) {
        let Ok(mut guard) = self.state.lock() else { return };
        if let State::Idle = *guard {
            *guard = match mode() {
                Mode::None => return,
                Mode::Plain => State::Plain(Plain { start: Instant::now(), last: None, last_done: 0 }),
                _ => {
                    let b = ProgressBar::new(total as u64);
                    let style = ProgressStyle::with_template(&format!(
                        "{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {} (eta {{eta}})",
                        self.unit
                    ))
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
                    b.set_style(style);
                    State::Bar(b)
                }
            };
        }
        match &mut *guard {
            State::Idle => {}
            State::Bar(b) => {
                b.set_length(total as u64);
                b.set_position(done as u64);
            }
            State::Plain(p) => {
                let now = Instant::now();
                let due = match p.last {
                    None => true,
                    Some(t) => done >= total || (done != p.last_done && now - t >= PLAIN_EVERY),
                };
                if !due || (p.last.is_some() && done == p.last_done) {
                    return;
                }
                let elapsed = (now - p.start).as_secs_f64();
                let pct = if total > 0 { 100.0 * done as f64 / total as f64 } else { 100.0 };
                let eta = if done > 0 && done < total {
                    format!(", eta {}", fmt_duration(elapsed * (total - done) as f64 / done as f64))
                } else {
                    String::new()
                };
                eprintln!("[{:>6}] {} {done}/{total} ({pct:.0}%){eta}", fmt_duration(elapsed), self.unit);
                p.last = Some(now);
                p.last_done = done;
            }
        }
    }

    /// Ends the activity (a bar is cleared).
    pub fn finish(&self) {
        if let Ok(mut guard) = self.state.lock() {
            if let State::Bar(b) = &*guard {
                b.finish_and_clear();
            }
            *guard = State::Idle;
        }
    }
}

/// A line for the user on stderr, above any bar.
pub fn notice(msg: &str) {
    // Under MPI every rank runs the same command: rank 0 speaks for all.
    if !quantsmith::dist::is_root() {
        return;
    }
    eprintln!("note: {}", crate::cmd::printable(msg));
}
