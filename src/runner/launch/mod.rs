//! How a runner is started: the seam between a slot and the `Runner.Listener` it
//! supervises. Today one way, [`process`]: the listener as a child process of the
//! supervisor, its output read line by line and its exit awaited. A second way (a fresh
//! container for every job, through the Docker engine) goes beside it here, giving the
//! slot the same lines, the same exit and the same stop.

pub mod process;
