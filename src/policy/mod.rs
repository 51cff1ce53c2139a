//! Pure decision code and the words it decides in, at the bottom of the module graph: it
//! imports nothing of the crate outside this folder and does no IO (no files, sockets,
//! processes, tasks or logging; time is passed in), so every decision can be tested
//! alone, with tokio's paused clock where time matters.
//!
//! - [`machine`]: the listener machine and the slot machine (`slot::run` drives them);
//!   [`states`] the slot's state word and the supervisor's mode they decide on.
//! - [`watchdog`]: when a listener is stuck, and when the circuit breaker opens.
//! - [`cause`]: what a watchdog fire is attributed to, and the commands monitors send
//!   to slots; [`tcpinfo`]: dead paths and silent hangs read in a socket's `TCP_INFO`.
//! - [`events`]: the runner's console lines parsed; [`exit`]: what a listener's exit
//!   means.
//! - [`demand`]: how many runners the scale set needs, keyed on job ids.
//! - [`ratelimit`]: GitHub's rate limits and back-off.
//! - [`keepalive`]: what keepalive a connection gets.
//! - [`naming`]: runner names and which of them are ours.

pub mod cause;
pub mod demand;
pub mod events;
pub mod exit;
pub mod keepalive;
pub mod machine;
pub mod naming;
pub mod ratelimit;
pub mod states;
pub mod tcpinfo;
pub mod watchdog;
