//! The data plane: `levee edge`, a reverse proxy that identifies each request's source, counts
//! it in fixed memory, enforces the pool's Mitigations, protects its upstream with a circuit
//! breaker, and reports to the operator. Its building blocks are pure: time is passed in.

pub mod breaker;
pub mod counter;
pub mod metrics;
pub mod proxy;
pub mod report;
pub mod rules;
pub mod run;
pub mod settings;
pub mod sketch;
pub mod source;
pub mod upstream;
pub mod wire;
