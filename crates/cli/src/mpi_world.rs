//! The MPI process group (the `mpi` feature): `quantsmith::dist::Collective` over MPI's world
//! communicator, started when the process was launched by `mpirun`/`mpiexec`.

use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use quantsmith::dist::Collective;
use quantsmith::Result;

/// Largest message sent in one MPI call (MPI counts are 32-bit).
const CHUNK: usize = 1 << 30;

/// MPI's world communicator.
struct World;

fn world() -> SimpleCommunicator {
    SimpleCommunicator::world()
}

impl Collective for World {
    fn rank(&self) -> usize {
        world().rank() as usize
    }

    fn size(&self) -> usize {
        world().size() as usize
    }

    fn gather(&self, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        let w = world();
        if w.rank() != 0 {
            let root = w.process_at_rank(0);
            root.send(&(bytes.len() as u64));
            for c in bytes.chunks(CHUNK) {
                root.send(c);
            }
            return Ok(None);
        }
        let mut all = vec![bytes.to_vec()];
        for r in 1..w.size() {
            let p = w.process_at_rank(r);
            let (len, _) = p.receive::<u64>();
            let mut buf = vec![0u8; len as usize];
            for c in buf.chunks_mut(CHUNK) {
                p.receive_into(c);
            }
            all.push(buf);
        }
        Ok(Some(all))
    }

    fn broadcast(&self, mut bytes: Vec<u8>) -> Result<Vec<u8>> {
        let w = world();
        let root = w.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        for c in bytes.chunks_mut(CHUNK) {
            root.broadcast_into(c);
        }
        Ok(bytes)
    }

    fn abort(&self, code: i32) -> ! {
        world().abort(code)
    }
}

/// Starts MPI when this process is one rank of an `mpirun` job (and only then: a plain run
/// never initialises MPI), and installs its world as the library's process group. The
/// returned universe finalises MPI when dropped.
pub fn start() -> quantsmith::Result<Option<mpi::environment::Universe>> {
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"]
        .iter()
        .any(|k| std::env::var_os(k).is_some());
    if !launched {
        return Ok(None);
    }
    let universe = mpi::initialize()
        .ok_or_else(|| quantsmith::Error::Other("MPI was already initialised in this process".into()))?;
    quantsmith::dist::install(Box::new(World))?;
    Ok(Some(universe))
}
