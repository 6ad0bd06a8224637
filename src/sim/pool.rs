//! A pool of instances (pods, workers, database replicas) with a start-up delay.

use std::collections::VecDeque;

/// Instances that are ready, and instances still starting with the time each becomes ready.
#[derive(Clone, Debug, Default)]
pub struct Pool {
    ready: i64,
    starting: VecDeque<f64>,
}

impl Pool {
    pub fn new(ready: i64) -> Self {
        Self { ready: ready.max(0), starting: VecDeque::new() }
    }

    pub fn ready(&self) -> i64 {
        self.ready
    }

    /// Ready plus starting: what is paid for.
    pub fn total(&self) -> i64 {
        self.ready + self.starting.len() as i64
    }

    /// Asks for `desired` instances at `now`; new ones are ready after `startup` seconds.
    /// Scale-down removes starting instances first (newest first), then ready ones.
    pub fn scale_to(&mut self, desired: i64, now: f64, startup: f64) {
        let desired = desired.max(0);
        while self.total() < desired {
            self.starting.push_back(now + startup);
        }
        while self.total() > desired {
            if self.starting.pop_back().is_none() {
                self.ready -= 1;
            }
        }
    }

    /// Moves instances whose start-up is over to ready. `boots` decides, for each, whether
    /// it booted (given how many are ready); one that failed starts over and is ready after
    /// `retry` more seconds.
    pub fn advance(&mut self, now: f64, retry: f64, mut boots: impl FnMut(i64) -> bool) {
        let mut still = VecDeque::with_capacity(self.starting.len());
        while let Some(at) = self.starting.pop_front() {
            if at > now {
                still.push_back(at);
            } else if boots(self.ready) {
                self.ready += 1;
            } else {
                still.push_back(now + retry);
            }
        }
        self.starting = still;
    }

    /// Kills every ready instance; the same number restart and are ready after `startup`.
    pub fn recycle_ready(&mut self, now: f64, startup: f64) {
        for _ in 0..self.ready {
            self.starting.push_back(now + startup);
        }
        self.ready = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_delay_and_scale_down_order() {
        let mut p = Pool::new(2);
        p.scale_to(5, 0.0, 60.0);
        assert_eq!((p.ready(), p.total()), (2, 5));
        p.advance(59.0, 60.0, |_| true);
        assert_eq!(p.ready(), 2);
        p.advance(60.0, 60.0, |_| true);
        assert_eq!(p.ready(), 5);
        p.scale_to(7, 61.0, 60.0);
        p.scale_to(4, 62.0, 60.0);
        assert_eq!((p.ready(), p.total()), (4, 4), "starting ones go first");
    }

    #[test]
    fn failed_boots_retry() {
        let mut p = Pool::new(0);
        p.scale_to(3, 0.0, 10.0);
        p.advance(10.0, 10.0, |ready| ready > 0);
        assert_eq!(p.ready(), 0, "nobody boots from zero");
        p.recycle_ready(10.0, 10.0);
        assert_eq!(p.total(), 3);
    }
}
