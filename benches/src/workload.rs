//! `lanyard-bench workload`: the Workload API against the bare tonic unary
//! call on the same socket, in interleaved rounds, with the agent's CPU per
//! call beside each figure. A bare tonic server stream (health Watch) runs
//! too, so that what gRPC streaming costs by itself is told apart from what
//! the Workload API adds to it.
//!
//! On a machine where the load generator shares the agent's cores, the
//! throughput of both scenarios is bounded by the sum of the client's and
//! the agent's work per call, so the agent's CPU per call (read from
//! `/proc/PID/stat` around each run) is reported too: it is the part of the
//! ratio the agent is responsible for. `--pin` puts the agent and server on
//! the first CPU and the load generator on the others, so the two do not
//! take each other's time.

use std::time::Duration;

use serde::Serialize;

use crate::procs::{self, Deployment};
use crate::scenarios;
use crate::stats::Report;

/// One scenario run with the agent CPU it took.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// Latencies and throughput.
    pub report: Report,
    /// Agent CPU per successful call, microseconds.
    pub agent_us_per_call: f64,
}

/// One round: the bare call, the bare stream, FetchX509SVID and
/// FetchJWTSVID, one after the other.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// grpc.health.v1 Check.
    pub bare: Measured,
    /// grpc.health.v1 Watch (first message of the stream).
    pub bare_stream: Measured,
    /// FetchX509SVID (first message of the stream).
    pub x509: Measured,
    /// FetchJWTSVID (cached).
    pub jwt: Measured,
}

impl Round {
    /// Bare calls per FetchX509SVID call, in throughput.
    pub fn throughput_ratio(&self) -> f64 {
        ratio(self.bare.report.per_second, self.x509.report.per_second)
    }

    /// FetchX509SVID's p50 over the bare call's.
    pub fn p50_ratio(&self) -> f64 {
        ratio(self.x509.report.p50_ms, self.bare.report.p50_ms)
    }

    /// FetchX509SVID's p99 over the bare call's.
    pub fn p99_ratio(&self) -> f64 {
        ratio(self.x509.report.p99_ms, self.bare.report.p99_ms)
    }

    /// Agent CPU per FetchX509SVID call over the bare call's.
    pub fn agent_cpu_ratio(&self) -> f64 {
        ratio(self.x509.agent_us_per_call, self.bare.agent_us_per_call)
    }

    /// Bare calls per bare stream, in throughput: what gRPC streaming
    /// itself costs over a unary call.
    pub fn stream_throughput_ratio(&self) -> f64 {
        ratio(
            self.bare.report.per_second,
            self.bare_stream.report.per_second,
        )
    }

    /// Bare streams per FetchX509SVID call, in throughput: what the
    /// Workload API (attestation, re-check, SVIDs) costs over a stream.
    pub fn x509_over_stream_throughput_ratio(&self) -> f64 {
        ratio(
            self.bare_stream.report.per_second,
            self.x509.report.per_second,
        )
    }

    /// Agent CPU per bare stream over the bare call's.
    pub fn stream_agent_cpu_ratio(&self) -> f64 {
        ratio(
            self.bare_stream.agent_us_per_call,
            self.bare.agent_us_per_call,
        )
    }

    /// Agent CPU per FetchX509SVID call over the bare stream's.
    pub fn x509_over_stream_agent_cpu_ratio(&self) -> f64 {
        ratio(
            self.x509.agent_us_per_call,
            self.bare_stream.agent_us_per_call,
        )
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The median of `v` (0 when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn measured<F>(d: &Deployment, run: F) -> anyhow::Result<Measured>
where
    F: std::future::Future<Output = anyhow::Result<Report>>,
{
    let pid = d.agent.0.id();
    let before = procs::cpu_ticks(pid)?;
    let report = run.await?;
    let ticks = procs::cpu_ticks(pid)?.saturating_sub(before);
    let cpu_us = ticks as f64 * 1e6 / procs::ticks_per_second() as f64;
    let agent_us_per_call = if report.ok > 0 {
        cpu_us / report.ok as f64
    } else {
        0.0
    };
    Ok(Measured {
        report,
        agent_us_per_call,
    })
}

/// `rounds` rounds of the four scenarios at `concurrency` clients.
pub async fn rounds(
    d: &Deployment,
    concurrency: usize,
    duration: Duration,
    rounds: usize,
) -> anyhow::Result<Vec<Round>> {
    let mut out = Vec::new();
    for i in 0..rounds {
        eprintln!("- round {}/{rounds}, {concurrency} clients", i + 1);
        let bare = measured(d, scenarios::baseline(d, concurrency, duration)).await?;
        let bare_stream = measured(d, scenarios::baseline_stream(d, concurrency, duration)).await?;
        let x509 = measured(d, scenarios::fetch_x509(d, concurrency, duration)).await?;
        let jwt = measured(d, scenarios::fetch_jwt(d, concurrency, duration)).await?;
        out.push(Round {
            bare,
            bare_stream,
            x509,
            jwt,
        });
    }
    Ok(out)
}

/// Pins the agent and the server to CPU 0 and this process (every thread)
/// to the other CPUs, with util-linux's `taskset`.
pub fn pin(d: &Deployment) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    anyhow::ensure!(cpus >= 2, "--pin needs at least two CPUs");
    let others = format!("1-{}", cpus - 1);
    let targets = [
        ("0".to_owned(), d.agent.0.id()),
        ("0".to_owned(), d.server.0.id()),
        (others, std::process::id()),
    ];
    for (cpus, pid) in targets {
        let status = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", &cpus, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| anyhow::anyhow!("taskset: {e} (util-linux is needed for --pin)"))?;
        anyhow::ensure!(status.success(), "taskset -p -c {cpus} {pid} failed");
    }
    Ok(())
}

/// Prints each round and the medians.
pub fn print(rounds: &[Round]) {
    println!(
        "{:<6} {:<15} {:>10} {:>9} {:>9} {:>14}",
        "round", "scenario", "calls/s", "p50 ms", "p99 ms", "agent µs/call"
    );
    for (i, r) in rounds.iter().enumerate() {
        for m in [&r.bare, &r.bare_stream, &r.x509, &r.jwt] {
            println!(
                "{:<6} {:<15} {:>10.0} {:>9.3} {:>9.3} {:>14.1}",
                i + 1,
                short(&m.report.name),
                m.report.per_second,
                m.report.p50_ms,
                m.report.p99_ms,
                m.agent_us_per_call
            );
        }
    }
    let col = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    println!();
    println!(
        "FetchX509SVID against the bare call (median of {} rounds): throughput {:.2}x (target <= 1.3x), p50 {:.2}x, p99 {:.2}x, agent CPU per call {:.2}x",
        rounds.len(),
        col(Round::throughput_ratio),
        col(Round::p50_ratio),
        col(Round::p99_ratio),
        col(Round::agent_cpu_ratio),
    );
    println!(
        "The bare stream against the bare call: throughput {:.2}x, agent CPU per call {:.2}x; FetchX509SVID against the bare stream: throughput {:.2}x, agent CPU per call {:.2}x",
        col(Round::stream_throughput_ratio),
        col(Round::stream_agent_cpu_ratio),
        col(Round::x509_over_stream_throughput_ratio),
        col(Round::x509_over_stream_agent_cpu_ratio),
    );
}

fn short(name: &str) -> &str {
    match name {
        "baseline-health-unary" => "bare unary",
        "baseline-health-stream" => "bare stream",
        "fetch-x509-svid" => "FetchX509SVID",
        "fetch-jwt-svid" => "FetchJWTSVID",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median(vec![]), 0.0);
    }
}
