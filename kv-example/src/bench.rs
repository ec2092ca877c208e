//! `kvctl bench`: a closed-loop workload (each client keeps one request in flight on its own
//! keep-alive connection; clients are spread round-robin over the endpoints), its results as a
//! table, JSON, and an SVG chart.

use crate::client::format_table;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The workload.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    /// Concurrent clients.
    pub clients: usize,
    /// Operations in total (the run also stops at `seconds_max`).
    pub operations: u64,
    /// Key size in bytes (at least 2).
    pub key_bytes: usize,
    /// Value size in bytes.
    pub value_bytes: usize,
    /// Fraction of operations that are reads, 0.0 to 1.0.
    pub read_ratio: f64,
    /// Distinct keys.
    pub keyspace: u64,
    /// Read consistency: linearizable or stale.
    pub consistency: String,
    /// Longest run, in seconds.
    pub seconds_max: f64,
    /// Timeout of one request.
    pub request_timeout_ms: u64,
}

impl Workload {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), String> {
        if self.clients == 0 || self.operations == 0 || self.keyspace == 0 {
            return Err("clients, operations and keyspace must be at least 1".into());
        }
        if self.key_bytes < 2 {
            return Err("key size must be at least 2 bytes".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err("read ratio must be between 0 and 1".into());
        }
        if self.seconds_max <= 0.0 {
            return Err("the time limit must be above zero".into());
        }
        Ok(())
    }
}

/// What one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// What was measured (e.g. `rocksdb+tcp`).
    pub label: String,
    /// The workload.
    pub workload: Workload,
    /// Operations that succeeded (a read of an absent key counts, as a miss).
    pub completed: u64,
    /// Reads of absent keys.
    pub misses: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Up to five error messages.
    pub error_samples: Vec<String>,
    /// Wall time.
    pub seconds: f64,
    /// Completed operations per second.
    pub ops_per_second: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// 99.9th percentile latency.
    pub p999_ms: f64,
    /// Slowest operation.
    pub max_ms: f64,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn percentile(sorted_micros: &[u32], fraction: f64) -> f64 {
    if sorted_micros.is_empty() {
        return f64::NAN;
    }
    let index = ((fraction * (sorted_micros.len() - 1) as f64).round() as usize)
        .min(sorted_micros.len() - 1);
    f64::from(sorted_micros[index]) / 1000.0
}

#[derive(Default)]
struct ClientTally {
    latencies_micros: Vec<u32>,
    misses: u64,
    errors: u64,
    error_samples: Vec<String>,
}

/// Runs `workload` against `endpoints`, showing progress on `progress` (may be hidden).
pub async fn run(
    label: &str,
    endpoints: &[String],
    workload: &Workload,
    progress: &ProgressBar,
) -> Result<BenchResult, String> {
    workload.validate()?;
    if endpoints.is_empty() {
        return Err("no endpoints".into());
    }
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(workload.seconds_max);
    let value = bytes::Bytes::from(vec![b'v'; workload.value_bytes]);
    let mut tasks = Vec::new();
    for client in 0..workload.clients {
        let endpoint = endpoints[client % endpoints.len()]
            .trim_end_matches('/')
            .to_string();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .timeout(Duration::from_millis(workload.request_timeout_ms))
            .build()
            .map_err(|e| e.to_string())?;
        let workload = workload.clone();
        let next = next.clone();
        let value = value.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = ClientTally::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= workload.operations || Instant::now() >= deadline {
                    break;
                }
                let random = splitmix64(n ^ 0x5eed);
                let read = (random % 10_000) as f64 / 10_000.0 < workload.read_ratio;
                let key_number = splitmix64(random) % workload.keyspace;
                let key = format!("k{key_number:0width$}", width = workload.key_bytes - 1);
                let url = format!("{endpoint}/v1/kv/{key}");
                let begun = Instant::now();
                let outcome = if read {
                    http.get(format!("{url}?consistency={}", workload.consistency))
                        .send()
                        .await
                } else {
                    http.put(&url).body(value.clone()).send().await
                };
                let result = match outcome {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.bytes().await;
                        match (status.as_u16(), body) {
                            (200..=299, Ok(_)) => Ok(false),
                            (404, Ok(_)) if read => Ok(true),
                            (code, Ok(body)) => Err(format!(
                                "HTTP {code}: {}",
                                String::from_utf8_lossy(&body[..body.len().min(200)])
                            )),
                            (_, Err(error)) => Err(error.to_string()),
                        }
                    }
                    Err(error) => Err(error.to_string()),
                };
                let micros = begun.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                match result {
                    Ok(miss) => {
                        tally.latencies_micros.push(micros);
                        tally.misses += u64::from(miss);
                    }
                    Err(error) => {
                        tally.errors += 1;
                        if tally.error_samples.len() < 5 {
                            tally.error_samples.push(error);
                        }
                    }
                }
                progress.inc(1);
            }
            tally
        }));
    }
    let mut all = ClientTally::default();
    for task in tasks {
        let tally = task.await.map_err(|e| e.to_string())?;
        all.latencies_micros.extend(tally.latencies_micros);
        all.misses += tally.misses;
        all.errors += tally.errors;
        all.error_samples.extend(tally.error_samples);
    }
    all.error_samples.truncate(5);
    let seconds = started.elapsed().as_secs_f64();
    all.latencies_micros.sort_unstable();
    let completed = all.latencies_micros.len() as u64;
    Ok(BenchResult {
        label: label.to_string(),
        workload: workload.clone(),
        completed,
        misses: all.misses,
        errors: all.errors,
        error_samples: all.error_samples,
        seconds,
        ops_per_second: completed as f64 / seconds,
        p50_ms: percentile(&all.latencies_micros, 0.5),
        p99_ms: percentile(&all.latencies_micros, 0.99),
        p999_ms: percentile(&all.latencies_micros, 0.999),
        max_ms: percentile(&all.latencies_micros, 1.0),
    })
}

/// A progress bar for `operations` (hidden when `visible` is false).
pub fn progress_bar(operations: u64, label: &str, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(operations);
    let style =
        ProgressStyle::with_template("{prefix:>14} [{bar:40}] {pos}/{len} ops {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar
}

/// The results as a text table.
pub fn table(results: &[BenchResult]) -> String {
    let mut rows = vec![[
        "RUN", "CLIENTS", "READS", "OPS/S", "P50 MS", "P99 MS", "P99.9 MS", "MAX MS", "ERRORS",
    ]
    .map(String::from)
    .to_vec()];
    for r in results {
        rows.push(vec![
            r.label.clone(),
            r.workload.clients.to_string(),
            format!("{:.0}%", r.workload.read_ratio * 100.0),
            format!("{:.0}", r.ops_per_second),
            format!("{:.2}", r.p50_ms),
            format!("{:.2}", r.p99_ms),
            format!("{:.2}", r.p999_ms),
            format!("{:.2}", r.max_ms),
            r.errors.to_string(),
        ]);
    }
    format_table(&rows)
}

fn escape_xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A bar chart of throughput per run, with p50 and p99 latency written on each bar.
pub fn svg_chart(results: &[BenchResult], title: &str) -> String {
    let width = 760.0;
    let bar_height = 34.0;
    let top = 56.0;
    let left = 150.0;
    let plot_width = width - left - 40.0;
    let height = top + bar_height * results.len() as f64 + 40.0;
    let max = results
        .iter()
        .map(|r| r.ops_per_second)
        .fold(1.0_f64, f64::max);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"24\" font-size=\"16\" font-weight=\"bold\">{}</text>\n\
         <text x=\"{left}\" y=\"42\" fill=\"#555\">operations per second (bar); p50 / p99 latency in ms (label)</text>\n",
        escape_xml(title)
    );
    for (i, r) in results.iter().enumerate() {
        let y = top + bar_height * i as f64;
        let bar = (r.ops_per_second / max * plot_width).max(1.0);
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n\
             <rect x=\"{left}\" y=\"{}\" width=\"{bar:.1}\" height=\"{}\" fill=\"#4a7bd0\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{}\">{:.0}/s  p50 {:.2}  p99 {:.2}</text>\n",
            left - 8.0,
            y + bar_height * 0.6,
            escape_xml(&r.label),
            y + 4.0,
            bar_height - 8.0,
            if bar > 260.0 {
                left + 6.0
            } else {
                left + bar + 6.0
            },
            y + bar_height * 0.6,
            if bar > 260.0 { "white" } else { "black" },
            r.ops_per_second,
            r.p50_ms,
            r.p99_ms,
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(label: &str, ops: f64) -> BenchResult {
        BenchResult {
            label: label.into(),
            workload: Workload {
                clients: 4,
                operations: 100,
                key_bytes: 16,
                value_bytes: 256,
                read_ratio: 0.5,
                keyspace: 10,
                consistency: "linearizable".into(),
                seconds_max: 10.0,
                request_timeout_ms: 1000,
            },
            completed: 100,
            misses: 0,
            errors: 0,
            error_samples: vec![],
            seconds: 1.0,
            ops_per_second: ops,
            p50_ms: 1.0,
            p99_ms: 2.0,
            p999_ms: 3.0,
            max_ms: 4.0,
        }
    }

    /// Percentiles pick the nearest rank; an empty run has none.
    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let sorted: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&sorted, 0.5), 0.501);
        assert_eq!(percentile(&sorted, 0.99), 0.990);
        assert_eq!(percentile(&sorted, 1.0), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    /// The chart has one bar per run, the longest for the fastest, and escapes labels.
    #[test]
    fn chart_scales_bars_to_the_fastest_run() {
        let svg = svg_chart(&[result("a<b", 100.0), result("c", 50.0)], "t");
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert!(svg.contains("a&lt;b"));
        assert!(svg.contains("width=\"570.0\""), "{svg}");
        assert!(svg.contains("width=\"285.0\""), "{svg}");
        assert!(table(&[result("a", 1.0)]).contains("50%"));
    }
}
