//! `--metrics`: a real Prometheus server (Debian's `prometheus`) scrapes udptrace every second
//! while a storm of datagrams dies at a closed port; its HTTP API must give the kernel's own
//! count, although most drop events are sampled out.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use udptrace::lab::peers::{ClientSpec, run_client};

use crate::common::{Trace, client_and_server, stats, verdicts};

/// udptrace's scrape endpoint and Prometheus's own address (the ports this test may use).
const METRICS: &str = "127.0.0.1:9461";
const PROMETHEUS: &str = "127.0.0.1:9081";
/// The closed port.
const PORT: u16 = 5701;
/// Sent at once: far past the events written per flow and second
/// (`SAMPLE_EVENTS_PER_SECOND`), so most drop events are sampled out and only the kernel's
/// counts can be exact.
const DATAGRAMS: usize = 1_000;
/// udptrace drains the kernel's counts every second, a second after they were counted, and
/// Prometheus scrapes every second: a count reaches Prometheus within about three seconds.
const PIPELINE: Duration = Duration::from_secs(15);

/// A Prometheus server with its own configuration and data directory, stopped and removed on
/// drop.
struct Prometheus {
    dir: PathBuf,
    child: Child,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second; returns once it has scraped it.
    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("udptrace-prometheus-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).unwrap();
        fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: udptrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus: install Debian's prometheus (`cargo xtask setup` does)");
        let mut prometheus = Self { dir, child };
        // It answers /-/ready once its database is open and its configuration loaded (a few
        // seconds; more under load).
        let deadline = Instant::now() + Duration::from_mins(1);
        while http_get(PROMETHEUS, "/-/ready").is_err() {
            let exited = prometheus.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "prometheus did not become ready ({exited:?}); its log:\n{}",
                prometheus.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        prometheus.wait_for("up{job=\"udptrace\"}", |up| up == 1);
        prometheus
    }

    /// Instant query results: (labels, value) of each series, the value as Prometheus wrote
    /// it.
    fn query(&self, query: &str) -> Vec<(Value, String)> {
        let body = http_get(
            PROMETHEUS,
            &format!("/api/v1/query?query={}", encode(query)),
        )
        .unwrap_or_else(|e| panic!("querying Prometheus: {e}; its log:\n{}", self.log()));
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["status"], "success", "{query}: {answer}");
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let value = series["value"][1].as_str().unwrap().to_owned();
                (series["metric"].clone(), value)
            })
            .collect()
    }

    /// Waits until `query` gives one series whose value (a count) satisfies `done`, and
    /// returns it. The wait is for the pipeline (kernel count → udptrace's drain → scrape), not
    /// a retry: a value that never comes fails the test with the last one seen.
    fn wait_for(&self, query: &str, done: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + PIPELINE;
        loop {
            let results = self.query(query);
            if let [(_, value)] = results.as_slice()
                && done(count(value))
            {
                return count(value);
            }
            assert!(
                Instant::now() < deadline,
                "{query} gave {results:?} after {PIPELINE:?}; Prometheus's log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: signalling our own child (SIGTERM: it closes its database cleanly).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A counter's value as Prometheus writes it: a whole number.
fn count(value: &str) -> u64 {
    value
        .parse()
        .unwrap_or_else(|_| panic!("{value:?} is not a count"))
}

/// `GET path` from `address` over HTTP/1.0 (the connection closes after the answer): the
/// body of a 200 answer.
fn http_get(address: &str, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("GET {path}: {head}"));
    }
    Ok(body.to_owned())
}

/// Percent-encodes a query parameter (RFC 3986: everything but the unreserved characters).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_kernels_count_of_a_drop_storm_at_a_closed_port_and_the_verdict() {
    let (client, server) = client_and_server("met", "198.51.100");
    let trace = Trace::start(&["--metrics", METRICS, "port", &PORT.to_string()]);
    let prometheus = Prometheus::start(METRICS);
    let before = server.snmp("Udp", "NoPorts").unwrap();
    // Unconnected: a connected socket would stop sending at the first ECONNREFUSED.
    let report = run_client(
        &client,
        &ClientSpec {
            connect: false,
            count: DATAGRAMS,
            interval: Duration::ZERO,
            reply_timeout: Duration::ZERO,
            ..ClientSpec::new(format!("198.51.100.2:{PORT}").parse().unwrap())
        },
    )
    .unwrap();
    assert_eq!(report.sent, DATAGRAMS, "{report:?}");
    let no_ports = server.snmp("Udp", "NoPorts").unwrap() - before;
    assert_eq!(
        no_ports, DATAGRAMS as u64,
        "the server namespace counted every datagram as NoPorts"
    );
    let drops = format!("udptrace_drops_total{{port=\"{PORT}\",reason=\"NO_SOCKET\"}}");
    let counted = prometheus.wait_for(&drops, |value| value >= no_ports);
    assert_eq!(counted, no_ports, "{drops} against NoPorts");
    // The drops are placed in the server's namespace (by name: it is in /run/netns).
    let series = prometheus.query(&drops);
    assert_eq!(series[0].0["netns"], server.name.as_str(), "{series:?}");
    prometheus.wait_for("udptrace_verdicts_total", |value| value >= 1);
    let verdict_series = prometheus.query("udptrace_verdicts_total");
    let codes: Vec<(&str, u64)> = verdict_series
        .iter()
        .map(|(labels, value)| (labels["code"].as_str().unwrap(), count(value)))
        .collect();
    assert_eq!(codes, [("port_unreachable", 1)]);
    // Every count reached Prometheus with the drops (the kernel's counters are read a tick
    // before its per-flow counts), and agrees with the tracer's own totals.
    let sampled = prometheus.wait_for("udptrace_events_sampled_total", |_| true);
    let lost = prometheus.wait_for("udptrace_events_lost_total", |_| true);
    // What the exposition says about the run itself, asked while udptrace still runs: once
    // a scrape of the stopped target fails, Prometheus marks its series stale and an instant
    // query returns none of them.
    let hooks = prometheus.query("sum(udptrace_hooks_attached{mechanism!=\"none\"})");
    assert!(
        hooks.first().is_some_and(|(_, value)| count(value) >= 1),
        "{hooks:?}"
    );
    let cpu = prometheus.query("udptrace_cpu_seconds_total");
    assert_eq!(cpu.len(), 2, "user and system: {cpu:?}");
    let records = trace.stop();
    let final_codes: Vec<&Value> = verdicts(&records).iter().map(|v| &v["code"]).collect();
    assert_eq!(final_codes, ["port_unreachable"]);
    let totals = stats(&records);
    assert!(sampled > 0, "the storm was sampled: {totals}");
    assert_eq!(sampled, totals["sampled"].as_u64().unwrap(), "{totals}");
    assert_eq!(lost, totals["lost"].as_u64().unwrap(), "{totals}");
}

#[test]
fn metrics_address_in_use_fails_before_anything_loads() {
    crate::common::require_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:9462").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_udptrace"))
        .args(["--metrics", "127.0.0.1:9462", "port", "5702"])
        .output()
        .unwrap();
    drop(taken);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    // EADDRINUSE's text is the C library's: "Address already in use" (glibc), "Address in use"
    // (musl: the static binary the kernel matrix runs).
    let line = stderr.trim();
    assert!(
        line.starts_with("udptrace: --metrics 127.0.0.1:9462: Address ")
            && line.ends_with(" in use (os error 98)")
            && !line.contains('\n'),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}
