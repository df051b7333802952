//! A circuit breaker for Redis: after a failure, calls are refused at once (fail closed) for a
//! short cool-off instead of each waiting out the Redis timeout, so an outage cannot pile up
//! waiting requests. The first call after the cool-off tries Redis again.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Open (refusing) for `cool_off` after each failure.
pub struct Breaker {
    start: Instant,
    open_until_ms: AtomicU64,
    cool_off: Duration,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cool_off: Duration) -> Breaker {
        Breaker {
            start: Instant::now(),
            open_until_ms: AtomicU64::new(0),
            cool_off,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Whether calls should be refused without trying Redis.
    pub fn is_open(&self) -> bool {
        self.now_ms() < self.open_until_ms.load(Ordering::Acquire)
    }

    /// Records a failure: open for the cool-off.
    pub fn trip(&self) {
        let until = self.now_ms() + self.cool_off.as_millis() as u64;
        self.open_until_ms.fetch_max(until, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_for_the_cool_off_then_closes() {
        let b = Breaker::new(Duration::from_millis(30));
        assert!(!b.is_open());
        b.trip();
        assert!(b.is_open());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!b.is_open());
    }
}
