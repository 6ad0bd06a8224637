//! The data plane's building blocks: per-source counting in fixed memory and circuit
//! breakers. Pure: time is passed in, nothing is read from a clock.

pub mod breaker;
pub mod sketch;
