//! Progress bars on stderr (hidden when stderr is not a terminal).

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar created on first update, so instant work shows nothing.
pub struct Progress {
    unit: &'static str,
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress {
    /// A bar counting `unit`s.
    pub fn new(unit: &'static str) -> Progress {
        Progress { unit, bar: Mutex::new(None) }
    }

    /// Reports `done` of `total`.
    pub fn update(&self, done: usize, total: usize) {
        let Ok(mut guard) = self.bar.lock() else { return };
        let bar = guard.get_or_insert_with(|| {
            let b = ProgressBar::new(total as u64);
            let style = ProgressStyle::with_template(&format!(
                "{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {} (eta {{eta}})",
                self.unit
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            b
        });
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Ok(mut guard) = self.bar.lock() {
            if let Some(b) = guard.take() {
                b.finish_and_clear();
            }
        }
    }
}
