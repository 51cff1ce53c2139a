//! How a runner is started: the seam between a slot and the `Runner.Listener` it
//! supervises. Two ways, giving the slot the same lines, the same exit and the same stop
//! (SIGINT, grace, SIGKILL): [`process`], the listener as a child process of the
//! supervisor; [`container`], a fresh container for every job through the Docker engine,
//! removed after it (`[runner] backend`).

pub mod container;
pub mod process;
pub mod toolcache;
