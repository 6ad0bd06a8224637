//! The pure core: a deterministic function of (policy, history, now) → plan. No I/O, no clock
//! reads, no unseeded randomness. Every decision carries a reason and a sentence.

pub mod bootstrap;
pub mod capacity;
pub mod detect;
pub mod forecast;
pub mod guard;
pub mod lead_time;
pub mod scaling;
pub mod spiral;
