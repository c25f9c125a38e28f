//! A Flight SQL client for `carrow sql` and `carrow demo`.

use anyhow::Context;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::RecordBatch;
use futures::TryStreamExt;
use tonic::transport::Channel;

/// Connects to `url` and logs in as `user` with `password`.
pub async fn connect(
    url: &str,
    user: &str,
    password: &str,
) -> anyhow::Result<FlightSqlServiceClient<Channel>> {
    connect_with_ca(url, user, password, None).await
}

/// [`connect`], over TLS to an `https://` URL when `ca_file` names the CA
/// that signed the server's certificate.
pub async fn connect_with_ca(
    url: &str,
    user: &str,
    password: &str,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<FlightSqlServiceClient<Channel>> {
    let mut endpoint = Channel::from_shared(url.to_string())
        .with_context(|| format!("{url:?} is not a valid address (expected http://host:port)"))?;
    if let Some(ca) = ca_file {
        anyhow::ensure!(
            url.starts_with("https://"),
            "--ca-file is for TLS: the URL must start with https://, not {url:?}"
        );
        let pem = std::fs::read(ca).with_context(|| format!("reading CA file {}", ca.display()))?;
        endpoint = endpoint.tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        )?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let mut client = FlightSqlServiceClient::new(channel);
    client
        .handshake(user, password)
        .await
        .with_context(|| format!("logging in to {url} as {user}"))?;
    Ok(client)
}

/// A result: its batches and its schema's metadata (the coordinator's
/// coverage manifest travels there).
pub struct QueryResult {
    pub batches: Vec<RecordBatch>,
    pub metadata: std::collections::HashMap<String, String>,
}

/// Runs `sql` and collects the result.
pub async fn run_query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> anyhow::Result<QueryResult> {
    let info = client.execute(sql.to_string(), None).await?;
    let mut batches = Vec::new();
    let mut metadata = std::collections::HashMap::new();
    for endpoint in info.endpoint {
        let ticket = endpoint
            .ticket
            .context("the server sent an endpoint without a ticket")?;
        let mut stream = client.do_get(ticket).await?;
        while let Some(batch) = stream.try_next().await? {
            batches.push(batch);
        }
        if let Some(schema) = stream.schema() {
            metadata.extend(schema.metadata().clone());
        }
    }
    Ok(QueryResult { batches, metadata })
}

/// A one-line summary of a coverage manifest: `acute ok (data to 2026-10-31), ...`.
pub fn coverage_line(metadata: &std::collections::HashMap<String, String>) -> Option<String> {
    let manifest: serde_json::Value =
        serde_json::from_str(metadata.get("carrow.coverage")?).ok()?;
    let parts: Vec<String> = manifest
        .as_object()?
        .iter()
        .map(|(node, c)| {
            let status = c["status"].as_str().unwrap_or("?");
            match c["freshness"].as_str() {
                Some(f) => format!("{node} {status} (data to {f})"),
                None => format!("{node} {status}"),
            }
        })
        .collect();
    Some(parts.join(", "))
}

/// A one-line summary of a disclosure control report, if the result had one.
pub fn disclosure_line(metadata: &std::collections::HashMap<String, String>) -> Option<String> {
    let report: serde_json::Value =
        serde_json::from_str(metadata.get("carrow.disclosure")?).ok()?;
    Some(format!(
        "{} cells released, {} values perturbed and rounded, {} withheld by the magnitude rules ({})",
        report["rows_released"],
        report["cells_perturbed"],
        report["cells_suppressed"],
        report["rule"].as_str().unwrap_or("?"),
    ))
}

/// Runs a coordinator action (`carrow.request.*`) and returns its JSON answer.
pub async fn action(
    client: &mut FlightSqlServiceClient<Channel>,
    name: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let results: Vec<_> = client
        .do_action(arrow_flight::Action {
            r#type: name.to_string(),
            body: body.to_string().into_bytes().into(),
        })
        .await?
        .try_collect()
        .await?;
    let first = results.first().context("the coordinator sent no answer")?;
    serde_json::from_slice(&first.body).context("the coordinator's answer is not JSON")
}
