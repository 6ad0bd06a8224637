//! Replays of recorded series: trace loading and forecast backtests.

pub mod backtest;
pub mod nab;
pub mod trace;
