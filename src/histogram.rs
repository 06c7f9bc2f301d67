//! Fixed-bucket histograms recorded with relaxed atomics from any thread (no lock,
//! no GIL), and read as a snapshot by `metrics`.
//!
//! Each histogram counts observations in base units (nanoseconds, jobs) into buckets
//! with fixed upper bounds, Prometheus's `le`, plus one for everything above.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use once_cell::sync::Lazy;

/// Upper bounds, in nanoseconds, for latencies from 10 µs to 10 s.
pub(crate) const SECONDS_BOUNDS_NS: &[u64] = &[
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Upper bounds for counts of jobs: powers of two up to the drain's batch limit.
pub(crate) const COUNT_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// What one unit of a histogram's observations is worth when exported.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Unit {
    /// Nanoseconds, exported as seconds.
    Nanoseconds,
    /// Plain counts.
    Count,
}

impl Unit {
    fn scale(self) -> f64 {
        match self {
            Unit::Nanoseconds => 1e-9,
            Unit::Count => 1.0,
        }
    }
}

/// One histogram.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [u64],
    unit: Unit,
    /// `bounds.len() + 1` buckets, the last for values above every bound.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A histogram as read at one moment: cumulative counts per upper bound, in the
/// exported unit, then the total.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations at or below it)`, bounds ascending; the last
    /// bound is `f64::INFINITY` and its count is the total.
    pub buckets: Vec<(f64, u64)>,
    /// The sum of every observation.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |&(_, n)| n)
    }
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [u64], unit: Unit) -> Self {
        Self {
            bounds,
            unit,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts one observation of `value` base units. Any thread.
    pub(crate) fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Counts a duration (for nanosecond histograms).
    pub(crate) fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The counts so far. Any thread; concurrent observations may or may not be in
    /// it, and every count is at least what an earlier snapshot showed.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let scale = self.unit.scale();
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, bucket) in self.buckets.iter().enumerate() {
            total += bucket.load(Ordering::Relaxed);
            let bound = self
                .bounds
                .get(i)
                .map_or(f64::INFINITY, |&b| b as f64 * scale);
            buckets.push((bound, total));
        }
        HistogramSnapshot {
            buckets,
            sum: self.sum.load(Ordering::Relaxed) as f64 * scale,
        }
    }
}

static ORIGIN: Lazy<std::time::Instant> = Lazy::new(std::time::Instant::now);

/// Now, as nanoseconds since a process-wide origin, for timestamps kept in atomics
/// (never zero, so zero can mean "none").
pub(crate) fn now_ns() -> u64 {
    u64::try_from(ORIGIN.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(COUNT_BOUNDS, Unit::Count);
        for v in [1, 1, 2, 3, 4096, 5000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets[0], (1.0, 2)); // 1, 1
        assert_eq!(s.buckets[1], (2.0, 3)); // 2
        assert_eq!(s.buckets[2], (4.0, 4)); // 3
        assert_eq!(s.buckets[COUNT_BOUNDS.len() - 1], (4096.0, 5));
        assert_eq!(s.buckets[COUNT_BOUNDS.len()], (f64::INFINITY, 6));
        assert_eq!(s.count(), 6);
        assert_eq!(s.sum, 9103.0);
    }

    #[test]
    fn durations_export_as_seconds() {
        let h = Histogram::new(SECONDS_BOUNDS_NS, Unit::Nanoseconds);
        h.observe_duration(Duration::from_micros(30));
        h.observe_duration(Duration::from_secs(20));
        let s = h.snapshot();
        assert_eq!(s.buckets[1], (25e-6, 0));
        assert_eq!(s.buckets[2], (50e-6, 1));
        assert_eq!(s.count(), 2);
        assert!((s.sum - 20.00003).abs() < 1e-9, "{}", s.sum);
    }
}
