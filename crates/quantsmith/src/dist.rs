//! Running one quantization across several processes (MPI ranks): the collective operations
//! the pipeline needs, and the ordered reduction of calibration statistics.
//!
//! The library does not link MPI: it talks to a [`Collective`], which the binary installs
//! ([`install`]) when it runs under `mpirun` (its `mpi` feature), and which is a single
//! process ([`Solo`]) otherwise.
//!
//! How the work splits: calibration windows are cut into batches (`batch_seqs` windows each);
//! batch `b` belongs to rank `b % size`. Each rank embeds and propagates only its batches
//! through every block, so activations and the forward passes divide by the number of ranks.
//! Statistics (Hessians, cross terms) are sums over batches: every batch's contribution is
//! kept apart as a *part* ([`crate::calib::HessianPart`]), and the parts are folded into the
//! sum in batch order. Round `j` holds batches `j·size … j·size + size − 1`, one per rank in
//! rank order, so gathering each round's parts to rank 0 and folding them in rank order is
//! the very sequence of additions one process makes: the sum, and so every solve and every
//! output byte, does not depend on the number of ranks. Rank 0 then broadcasts the sum; the
//! solves run on every rank (they are deterministic, and every rank needs the quantized
//! weights to propagate its batches), and rank 0 alone writes.

use std::sync::OnceLock;

use crate::{Error, Result};

/// The collective operations of a group of processes running one job.
pub trait Collective: Send + Sync {
    /// This process's index, `0..size`.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn size(&self) -> usize;
    /// Rank 0 receives every rank's bytes, in rank order (its own first); the others `None`.
    fn gather(&self, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>>;
    /// Every rank receives rank 0's bytes (`bytes` is read on rank 0 only).
    fn broadcast(&self, bytes: Vec<u8>) -> Result<Vec<u8>>;
    /// Ends every process of the job after an error on this one (the others may be waiting in
    /// a collective and would never return).
    fn abort(&self, code: i32) -> !;
}

/// One process: every collective is the identity.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn gather(&self, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        Ok(Some(vec![bytes.to_vec()]))
    }
    fn broadcast(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        Ok(bytes)
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

static WORLD: OnceLock<Box<dyn Collective>> = OnceLock::new();

/// Makes `c` the process group of this process (once, at start-up, before any work).
pub fn install(c: Box<dyn Collective>) -> Result<()> {
    WORLD.set(c).map_err(|_| Error::Other("internal: the process group was installed twice".into()))
}

/// The process group this process belongs to ([`Solo`] unless one was installed).
pub fn world() -> &'static dyn Collective {
    WORLD.get().map(|b| &**b).unwrap_or(&Solo)
}

/// Whether this process is rank 0 (the one that writes).
pub fn is_root() -> bool {
    world().rank() == 0
}

/// The global indices of the batches this rank owns, of `n_batches` in all.
pub fn my_batches(n_batches: usize, comm: &dyn Collective) -> Vec<usize> {
    (comm.rank()..n_batches).step_by(comm.size().max(1)).collect()
}

/// Rounds of a reduction over `n_batches` batches: every rank takes part in each, with a part
/// or without one (the last round may be short).
pub fn rounds(n_batches: usize, comm: &dyn Collective) -> usize {
    n_batches.div_ceil(comm.size().max(1))
}

/// Shares out jobs of the given costs among `ranks`: largest first, each onto the least
/// loaded rank (the lowest on a tie). Returns each job's rank; the same on every rank.
pub fn share_out(costs: &[f64], ranks: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]).then(a.cmp(&b)));
    let mut load = vec![0f64; ranks.max(1)];
    let mut owner = vec![0; costs.len()];
    for j in order {
        let r = (0..load.len()).min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b))).unwrap_or(0);
        owner[j] = r;
        load[r] += costs[j];
    }
    owner
}

/// A sum over batches that can take a batch's part and travel between processes.
pub trait Stat: Sized {
    /// What one batch adds.
    type Part;
    /// Adds a batch's part (in batch order: the order is part of the result).
    fn fold(&mut self, part: &Self::Part);
    /// The part as bytes (to send it to rank 0).
    fn part_bytes(part: &Self::Part) -> Vec<u8>;
    /// A part back from [`Stat::part_bytes`].
    fn part_from_bytes(b: &[u8]) -> std::result::Result<Self::Part, String>;
    /// The whole sum as bytes (rank 0 broadcasts it).
    fn to_bytes(&self) -> Vec<u8>;
    /// The sum back from [`Stat::to_bytes`].
    fn from_bytes(b: &[u8]) -> std::result::Result<Self, String>;
}

/// A sum over the batches of every rank, folded in batch order ([`Stat`]).
pub struct Reduce<'c, S: Stat> {
    total: S,
    comm: &'c dyn Collective,
}

impl<'c, S: Stat> Reduce<'c, S> {
    /// A reduction onto `empty` (the same empty statistics on every rank).
    pub fn new(empty: S, comm: &'c dyn Collective) -> Self {
        Reduce { total: empty, comm }
    }

    /// One round: this rank's part for it, or `None` when it has no batch in this round.
    /// Every rank must call it for every round.
    pub fn round(&mut self, mine: Option<S::Part>) -> Result<()> {
        if self.comm.size() == 1 {
            if let Some(p) = mine {
                self.total.fold(&p);
            }
            return Ok(());
        }
        let bytes = mine.as_ref().map(|p| S::part_bytes(p)).unwrap_or_default();
        let mut msg = Vec::with_capacity(bytes.len() + 1);
        msg.push(mine.is_some() as u8);
        msg.extend_from_slice(&bytes);
        drop(bytes);
        if let Some(all) = self.comm.gather(&msg)? {
            drop(msg);
            for (r, m) in all.iter().enumerate() {
                match m.split_first() {
                    Some((1, b)) => {
                        let part = S::part_from_bytes(b)
                            .map_err(|e| Error::Other(format!("statistics from rank {r}: {e}")))?;
                        self.total.fold(&part);
                    }
                    Some((0, _)) => {}
                    _ => return Err(Error::Other(format!("statistics from rank {r}: a malformed message"))),
                }
            }
        }
        Ok(())
    }

    /// The sum, the same on every rank (rank 0 broadcasts its fold).
    pub fn finish(self) -> Result<S> {
        if self.comm.size() == 1 {
            return Ok(self.total);
        }
        let root = self.comm.rank() == 0;
        let bytes = self.comm.broadcast(if root { self.total.to_bytes() } else { Vec::new() })?;
        if root {
            return Ok(self.total);
        }
        S::from_bytes(&bytes).map_err(|e| Error::Other(format!("statistics from rank 0: {e}")))
    }
}

/// Little-endian writer/reader of the statistics' messages.
pub mod wire {
    /// Appends a u64.
    pub fn put_u64(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a length-prefixed f64 vector.
    pub fn put_f64s(out: &mut Vec<u8>, v: &[f64]) {
        put_u64(out, v.len() as u64);
        for x in v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    /// Appends a length-prefixed f32 vector.
    pub fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
        put_u64(out, v.len() as u64);
        for x in v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }

    /// Appends a length-prefixed byte string.
    pub fn put_bytes(out: &mut Vec<u8>, v: &[u8]) {
        put_u64(out, v.len() as u64);
        out.extend_from_slice(v);
    }

    /// Reads what the `put_*` functions wrote, in the same order.
    pub struct Reader<'a> {
        b: &'a [u8],
    }

    impl<'a> Reader<'a> {
        /// A reader over `b`.
        pub fn new(b: &'a [u8]) -> Self {
            Reader { b }
        }
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if self.b.len() < n {
                return Err(format!("truncated message ({} bytes short)", n - self.b.len()));
            }
            let (h, t) = self.b.split_at(n);
            self.b = t;
            Ok(h)
        }
        /// A u64.
        pub fn u64(&mut self) -> Result<u64, String> {
            Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
        }
        fn len(&mut self, elem: usize) -> Result<usize, String> {
            let n = self.u64()?;
            if n.checked_mul(elem as u64).is_none_or(|b| b > self.b.len() as u64) {
                return Err(format!("a vector of {n} elements runs past the message"));
            }
            Ok(n as usize)
        }
        /// A length-prefixed f64 vector.
        pub fn f64s(&mut self) -> Result<Vec<f64>, String> {
            let n = self.len(8)?;
            Ok(self.take(n * 8)?.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8"))).collect())
        }
        /// A length-prefixed f32 vector.
        pub fn f32s(&mut self) -> Result<Vec<f32>, String> {
            let n = self.len(4)?;
            Ok(self.take(n * 4)?.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect())
        }
        /// A length-prefixed byte string.
        pub fn bytes(&mut self) -> Result<&'a [u8], String> {
            let n = self.len(1)?;
            self.take(n)
        }
        /// Whether everything was read.
        pub fn is_empty(&self) -> bool {
            self.b.is_empty()
        }
        /// Whether everything was read (an error naming what is left otherwise).
        pub fn done(&self) -> Result<(), String> {
            if self.b.is_empty() {
                Ok(())
            } else {
                Err(format!("{} bytes left over", self.b.len()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::sync::Mutex;

    /// Ranks as threads of one process, talking over channels: for testing the reduction's
    /// arithmetic without MPI.
    struct Threads {
        rank: usize,
        size: usize,
        /// Non-root: to rank 0.
        up: Option<Sender<Vec<u8>>>,
        /// Root: from ranks 1.. (index r − 1).
        ups: Mutex<Vec<Receiver<Vec<u8>>>>,
        /// Root: to ranks 1.. (index r − 1).
        downs: Vec<Sender<Vec<u8>>>,
        /// Non-root: from rank 0.
        down: Mutex<Option<Receiver<Vec<u8>>>>,
    }

    impl Threads {
        fn group(size: usize) -> Vec<Threads> {
            let (mut ups_tx, mut ups_rx, mut downs_tx, mut downs_rx) = (vec![], vec![], vec![], vec![]);
            for _ in 1..size {
                let (t, r) = channel();
                ups_tx.push(t);
                ups_rx.push(r);
                let (t, r) = channel();
                downs_tx.push(t);
                downs_rx.push(r);
            }
            let mut out = vec![Threads {
                rank: 0,
                size,
                up: None,
                ups: Mutex::new(ups_rx),
                downs: downs_tx,
                down: Mutex::new(None),
            }];
            for (r, (up, down)) in ups_tx.into_iter().zip(downs_rx).enumerate() {
                out.push(Threads {
                    rank: r + 1,
                    size,
                    up: Some(up),
                    ups: Mutex::new(vec![]),
                    downs: vec![],
                    down: Mutex::new(Some(down)),
                });
            }
            out
        }
    }

    impl Collective for Threads {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn gather(&self, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
            if let Some(up) = &self.up {
                up.send(bytes.to_vec()).unwrap();
                return Ok(None);
            }
            let mut all = vec![bytes.to_vec()];
            for rx in self.ups.lock().unwrap().iter() {
                all.push(rx.recv().unwrap());
            }
            Ok(Some(all))
        }
        fn broadcast(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
            if self.rank == 0 {
                for tx in &self.downs {
                    tx.send(bytes.clone()).unwrap();
                }
                return Ok(bytes);
            }
            Ok(self.down.lock().unwrap().as_ref().unwrap().recv().unwrap())
        }
        fn abort(&self, _code: i32) -> ! {
            panic!("abort")
        }
    }

    /// The Hessian of rows spread over ranks, batch `b` on rank `b % size`, equals one
    /// process's bit for bit, for every number of ranks.
    #[test]
    fn a_hessian_reduced_over_ranks_is_the_single_process_one_bit_for_bit() {
        use crate::calib::Hessian;
        let (n, rows_per_batch, n_batches) = (13, 37, 11);
        let batch = |b: usize| -> Vec<f32> {
            (0..rows_per_batch * n)
                .map(|i| (((i * 7919 + b * 104_729) % 2001) as f32 - 1000.0) / 97.0 * (1.0 + (i % 5) as f32 * 1e3))
                .collect()
        };
        let mut one = Hessian::new(n);
        for b in 0..n_batches {
            one.add(&batch(b), rows_per_batch);
        }
        for size in [1, 2, 3, 4] {
            let results: Vec<Hessian> = std::thread::scope(|s| {
                let hs: Vec<_> = Threads::group(size)
                    .into_iter()
                    .map(|c| {
                        s.spawn(move || {
                            let mine = my_batches(n_batches, &c);
                            let mut red = Reduce::new(Hessian::new(n), &c);
                            for j in 0..rounds(n_batches, &c) {
                                let part = mine.get(j).map(|&b| {
                                    let mut p = Hessian::new(n).part();
                                    p.add(&batch(b), rows_per_batch);
                                    p
                                });
                                red.round(part).unwrap();
                            }
                            red.finish().unwrap()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for h in results {
                assert_eq!(h.count, one.count);
                assert!(h.sum_xxt.iter().zip(&one.sum_xxt).all(|(a, b)| a.to_bits() == b.to_bits()), "{size} ranks");
                assert!(h.sum_abs.iter().zip(&one.sum_abs).all(|(a, b)| a.to_bits() == b.to_bits()), "{size} ranks");
                assert_eq!(h.max_abs, one.max_abs);
            }
        }
    }

    #[test]
    fn messages_are_checked() {
        use crate::calib::Hessian;
        let mut p = Hessian::new(4).part();
        p.add(&[1.0; 8], 2);
        let b = Hessian::part_bytes(&p);
        assert!(Hessian::part_from_bytes(&b).is_ok());
        assert!(Hessian::part_from_bytes(&b[..b.len() - 1]).is_err());
        let mut longer = b.clone();
        longer.push(0);
        assert!(Hessian::part_from_bytes(&longer).is_err());
        let h = Hessian::new(4);
        assert!(Hessian::from_bytes(&h.to_bytes()[..5]).is_err());
    }
}
