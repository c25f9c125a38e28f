//! Helpers shared by the end-to-end tests.

use std::path::Path;
use std::process::{Command, Output};

/// The `carrow` binary built for these tests.
pub fn carrow() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_carrow"));
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Runs `carrow` with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    carrow().args(args).output().expect("carrow runs")
}

/// Standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Generates a small population into `dir` through the CLI.
pub fn generate(dir: &Path, people: usize, seed: u64) {
    let out = run(&[
        "generate",
        "--out",
        dir.to_str().unwrap(),
        "--people",
        &people.to_string(),
        "--seed",
        &seed.to_string(),
    ]);
    assert!(out.status.success(), "generate failed: {}", stderr(&out));
}

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Stdio};

use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::RecordBatch;
use futures::TryStreamExt;
use tonic::transport::Channel;

/// A `carrow node` process on an ephemeral port; killed on drop.
pub struct NodeProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr_path: std::path::PathBuf,
}

impl NodeProcess {
    /// Starts `carrow node --config CONFIG` listening on 127.0.0.1:0.
    pub fn start(config: &Path) -> Self {
        Self::start_on(config, "127.0.0.1:0")
    }

    /// Starts `carrow node --config CONFIG` listening on `listen`.
    pub fn start_on(config: &Path, listen: &str) -> Self {
        let stderr_path = config.with_extension("stderr.log");
        let stderr_file = std::fs::File::create(&stderr_path).unwrap();
        let mut child = carrow()
            .args(["node", "--config", config.to_str().unwrap()])
            .env("CARROW_NODE__LISTEN", listen)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file))
            .spawn()
            .expect("carrow node starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("node prints its address").unwrap();
        let addr = first
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("address in {first:?}"));
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            addr,
            stderr_path,
        }
    }

    /// Everything the node logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Flight SQL client logged in to `addr` as `user` with the token in `token_file`.
pub async fn client(
    addr: SocketAddr,
    user: &str,
    token_file: &Path,
) -> FlightSqlServiceClient<Channel> {
    let token = std::fs::read_to_string(token_file).unwrap();
    try_client(addr, user, token.trim())
        .await
        .expect("login succeeds")
}

/// Logs in with a given token.
pub async fn try_client(
    addr: SocketAddr,
    user: &str,
    token: &str,
) -> Result<FlightSqlServiceClient<Channel>, String> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = FlightSqlServiceClient::new(channel);
    client
        .handshake(user, token)
        .await
        .map_err(|e| e.to_string())?;
    Ok(client)
}

/// Runs `sql` and opens its (single-endpoint) result stream, unread.
pub async fn open_stream(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> arrow_flight::decode::FlightRecordBatchStream {
    let info = client
        .execute(sql.to_string(), None)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let ticket = info.endpoint[0]
        .ticket
        .clone()
        .expect("endpoint has a ticket");
    client
        .do_get(ticket)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs `sql` as a plain statement and collects the result.
pub async fn query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, String> {
    let info = client
        .execute(sql.to_string(), None)
        .await
        .map_err(|e| e.to_string())?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("endpoint has a ticket");
        let stream = client.do_get(ticket).await.map_err(|e| e.to_string())?;
        batches.extend(
            stream
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(batches)
}

/// Rows of `batches` as text cells, sorted, for comparisons.
pub fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut out = ordered_rows(batches);
    out.sort();
    out
}

/// The rows of `batches` as strings, in the order they came.
pub fn ordered_rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    use datafusion::arrow::util::display::array_value_to_string;
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            out.push(
                b.columns()
                    .iter()
                    .map(|c| array_value_to_string(c, r).unwrap())
                    .collect(),
            );
        }
    }
    out
}

/// Runs `sql` in a fresh in-process DataFusion session over `tables` (name, CSV path).
pub async fn local_query(tables: &[(&str, std::path::PathBuf)], sql: &str) -> Vec<RecordBatch> {
    use datafusion::prelude::{CsvReadOptions, SessionContext};
    let ctx = SessionContext::new();
    for (name, path) in tables {
        ctx.register_csv(*name, path.to_str().unwrap(), CsvReadOptions::new())
            .await
            .unwrap();
    }
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// Runs the coordinator action `name` with a JSON `body`; returns its JSON answer.
pub async fn action(
    client: &mut FlightSqlServiceClient<Channel>,
    name: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let results: Vec<_> = client
        .do_action(arrow_flight::Action {
            r#type: name.to_string(),
            body: body.to_string().into_bytes().into(),
        })
        .await
        .map_err(|e| e.to_string())?
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let first = results.first().ok_or("no result")?;
    serde_json::from_slice(&first.body).map_err(|e| e.to_string())
}

/// Has the generated researcher submit each of `sqls` (as `output`) and
/// both generated reviewers approve it; returns the researcher's client.
pub async fn approved_researcher(
    addr: SocketAddr,
    root: &Path,
    sqls: &[&str],
    output: &str,
) -> FlightSqlServiceClient<Channel> {
    let secret = |user: &str| root.join(format!("secrets/{user}.token"));
    let mut researcher = client(addr, "researcher", &secret("researcher")).await;
    let mut reviewers = [
        client(addr, "reviewer1", &secret("reviewer1")).await,
        client(addr, "reviewer2", &secret("reviewer2")).await,
    ];
    for sql in sqls {
        let request = action(
            &mut researcher,
            "carrow.request.submit",
            serde_json::json!({"project": "demo", "purpose": "test", "output": output, "sql": sql}),
        )
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
        for reviewer in &mut reviewers {
            action(
                reviewer,
                "carrow.request.decide",
                serde_json::json!({"id": request["id"], "decision": "approve"}),
            )
            .await
            .unwrap();
        }
    }
    researcher
}

/// The most a released person count can differ from the exact one under
/// the default preset: a perturbation of at most 5, then rounding to 5.
pub const MAX_COUNT_ERROR: i64 = 7;

/// Whether `released` is what disclosure control may release for an exact
/// count of `exact` persons under the default preset: a multiple of 5
/// within [`MAX_COUNT_ERROR`] of it.
pub fn released_near(released: &str, exact: i64) -> bool {
    released
        .parse::<i64>()
        .is_ok_and(|r| r % 5 == 0 && (r - exact).abs() <= MAX_COUNT_ERROR)
}

/// The address a service logged on the line containing `marker` (as
/// `addr=HOST:PORT`), waiting up to 20 s for it to appear in `log()`.
pub fn logged_addr(log: impl Fn() -> String, marker: &str) -> SocketAddr {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = log();
        if let Some(addr) = text.lines().filter(|l| l.contains(marker)).find_map(|l| {
            l.split("addr=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        }) {
            return addr;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {marker:?} line in\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
