//! The operations listener of a node or coordinator: `/health`, whether the
//! service is ready (its checks by name, as JSON, 200 or 503), and
//! `/metrics`, counters, gauges and histograms in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// Upper bounds of the latency histograms' buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

type Labels = Vec<(String, String)>;

#[derive(Debug)]
enum Series {
    Value(f64),
    Histogram {
        counts: [u64; BUCKETS.len()],
        sum: f64,
        count: u64,
    },
}

#[derive(Debug)]
struct Family {
    kind: &'static str,
    help: &'static str,
    series: BTreeMap<Labels, Series>,
}

/// A service's metrics, updated as it works and rendered at each scrape.
#[derive(Debug, Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Metrics {
    fn with_series(
        &self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        pairs: &[(&str, &str)],
        new: impl FnOnce() -> Series,
        update: impl FnOnce(&mut Series),
    ) {
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let family = families.entry(name).or_insert_with(|| Family {
            kind,
            help,
            series: BTreeMap::new(),
        });
        update(family.series.entry(labels(pairs)).or_insert_with(new));
    }

    /// Adds `by` to the counter `name` with `labels`.
    pub fn add(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], by: f64) {
        self.with_series(
            name,
            "counter",
            help,
            labels,
            || Series::Value(0.0),
            |s| {
                if let Series::Value(v) = s {
                    *v += by;
                }
            },
        );
    }

    /// Sets the gauge `name` with `labels` to `value`.
    pub fn set(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: f64) {
        self.with_series(
            name,
            "gauge",
            help,
            labels,
            || Series::Value(0.0),
            |s| *s = Series::Value(value),
        );
    }

    /// Records one observation of `seconds` in the histogram `name`.
    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        seconds: f64,
    ) {
        self.with_series(
            name,
            "histogram",
            help,
            labels,
            || Series::Histogram {
                counts: [0; BUCKETS.len()],
                sum: 0.0,
                count: 0,
            },
            |s| {
                if let Series::Histogram { counts, sum, count } = s {
                    for (bound, n) in BUCKETS.iter().zip(counts.iter_mut()) {
                        if seconds <= *bound {
                            *n += 1;
                        }
                    }
                    *sum += seconds;
                    *count += 1;
                }
            },
        );
    }

    /// Everything in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, family) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            for (labels, series) in &family.series {
                match series {
                    Series::Value(v) => {
                        let _ = writeln!(out, "{name}{} {v}", render_labels(labels, None));
                    }
                    Series::Histogram { counts, sum, count } => {
                        for (bound, n) in BUCKETS.iter().zip(counts) {
                            let le = bound.to_string();
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {n}",
                                render_labels(labels, Some(&le))
                            );
                        }
                        let all = render_labels(labels, Some("+Inf"));
                        let _ = writeln!(out, "{name}_bucket{all} {count}");
                        let plain = render_labels(labels, None);
                        let _ = writeln!(out, "{name}_sum{plain} {sum}");
                        let _ = writeln!(out, "{name}_count{plain} {count}");
                    }
                }
            }
        }
        out
    }
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let escape = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// A service's readiness: each check by name, with what it found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Health {
    /// Every check passed.
    pub ready: bool,
    /// Check name to `ok` or what is wrong.
    pub checks: BTreeMap<String, String>,
}

impl Health {
    /// A health from `(check, problem if any)` pairs.
    pub fn from_checks(checks: impl IntoIterator<Item = (String, Option<String>)>) -> Self {
        let mut ready = true;
        let checks = checks
            .into_iter()
            .map(|(name, problem)| {
                ready &= problem.is_none();
                (name, problem.unwrap_or_else(|| "ok".into()))
            })
            .collect();
        Self { ready, checks }
    }
}

/// What a service shows on its operations listener.
pub trait Ops: Send + Sync + 'static {
    /// Its readiness (may read files: called off the async workers).
    fn health(&self) -> Health;
    /// Its metrics.
    fn metrics(&self) -> &Metrics;
    /// Sets gauges read at scrape time (node reachability, log sizes...).
    fn refresh_gauges(&self) {}
}

impl Metrics {
    /// The audit log's gauges: its records and the size of its file.
    pub fn set_audit_log(&self, records: u64, path: &std::path::Path) {
        self.set(
            "carrow_audit_log_records",
            "Records in the audit log.",
            &[],
            records as f64,
        );
        let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
        self.set(
            "carrow_audit_log_bytes",
            "Size of the audit log file.",
            &[],
            bytes as f64,
        );
    }
}

async fn health(State(ops): State<Arc<dyn Ops>>) -> impl IntoResponse {
    let health = tokio::task::spawn_blocking(move || ops.health())
        .await
        .unwrap_or_default();
    let status = if health.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&health).unwrap_or_default(),
    )
}

async fn metrics(State(ops): State<Arc<dyn Ops>>) -> impl IntoResponse {
    let text = tokio::task::spawn_blocking(move || {
        ops.refresh_gauges();
        ops.metrics().render()
    })
    .await
    .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// An HTTP server (the operations listener, the governance console),
/// serving until stopped.
pub struct HttpServer {
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Binds `listen` and serves `app` over plain HTTP.
    pub async fn start(listen: &str, app: Router) -> std::io::Result<Self> {
        Self::start_with(listen, move |listener, stopped| async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "an HTTP listener stopped");
            }
        })
        .await
    }

    /// Binds `listen` and runs `serve` on it until the receiver it is
    /// given fires (a TLS accept loop, say).
    pub async fn start_with<F, Fut>(listen: &str, serve: F) -> std::io::Result<Self>
    where
        F: FnOnce(tokio::net::TcpListener, tokio::sync::oneshot::Receiver<()>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, stopped));
        Ok(Self {
            addr,
            shutdown,
            task,
        })
    }

    /// Stops serving.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await;
    }
}

/// Binds `listen` and serves `/health` and `/metrics` of `ops`.
pub async fn serve(listen: &str, ops: Arc<dyn Ops>) -> std::io::Result<HttpServer> {
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(ops);
    HttpServer::start(listen, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_the_prometheus_text_format() {
        let m = Metrics::default();
        m.add("carrow_x_total", "Xs.", &[("rule", "a \"b\"")], 1.0);
        m.add("carrow_x_total", "Xs.", &[("rule", "a \"b\"")], 2.0);
        m.set("carrow_up", "Up.", &[], 1.0);
        m.observe("carrow_t_seconds", "T.", &[("node", "gp")], 0.2);
        m.observe("carrow_t_seconds", "T.", &[("node", "gp")], 3.0);
        let text = m.render();
        for line in [
            "# TYPE carrow_x_total counter",
            "carrow_x_total{rule=\"a \\\"b\\\"\"} 3",
            "# TYPE carrow_up gauge",
            "carrow_up 1",
            "carrow_t_seconds_bucket{node=\"gp\",le=\"0.25\"} 1",
            "carrow_t_seconds_bucket{node=\"gp\",le=\"10\"} 2",
            "carrow_t_seconds_bucket{node=\"gp\",le=\"+Inf\"} 2",
            "carrow_t_seconds_sum{node=\"gp\"} 3.2",
            "carrow_t_seconds_count{node=\"gp\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn health_is_ready_only_when_every_check_passes() {
        let ok = Health::from_checks([("a".to_string(), None), ("b".to_string(), None)]);
        assert!(ok.ready && ok.checks["a"] == "ok");
        let not = Health::from_checks([
            ("a".to_string(), None),
            ("b".to_string(), Some("down".into())),
        ]);
        assert!(!not.ready && not.checks["b"] == "down");
    }
}
