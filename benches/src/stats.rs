//! Latency samples, percentiles and the report.

use std::time::Duration;

use serde::Serialize;

/// The result of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub name: String,
    /// Successful operations.
    pub ok: u64,
    /// Failed operations.
    pub errors: u64,
    /// Operations per second (0 when not meaningful).
    pub per_second: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
    /// Wall time of the scenario, seconds.
    pub seconds: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q` quantile (0..=1) of sorted samples.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

impl Report {
    /// Summarises samples taken over `elapsed`.
    pub fn from_samples(
        name: &str,
        mut samples: Vec<Duration>,
        errors: u64,
        elapsed: Duration,
        rate: bool,
    ) -> Self {
        samples.sort_unstable();
        Self {
            name: name.to_owned(),
            ok: samples.len() as u64,
            errors,
            per_second: if rate && elapsed > Duration::ZERO {
                samples.len() as f64 / elapsed.as_secs_f64()
            } else {
                0.0
            },
            p50_ms: ms(quantile(&samples, 0.50)),
            p90_ms: ms(quantile(&samples, 0.90)),
            p99_ms: ms(quantile(&samples, 0.99)),
            max_ms: ms(samples.last().copied().unwrap_or_default()),
            seconds: elapsed.as_secs_f64(),
        }
    }
}

/// Prints reports as a table.
pub fn print_table(reports: &[Report]) {
    println!(
        "{:<22} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "scenario", "ok", "errors", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for r in reports {
        let rate = if r.per_second > 0.0 {
            format!("{:.0}", r.per_second)
        } else {
            "-".into()
        };
        println!(
            "{:<22} {:>9} {:>7} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            r.name, r.ok, r.errors, rate, r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&s, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&s, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
        let r = Report::from_samples("x", s, 2, Duration::from_secs(10), true);
        assert_eq!(r.ok, 100);
        assert!((r.per_second - 10.0).abs() < 1e-9);
        assert!((r.max_ms - 100.0).abs() < 1e-9);
    }
}
