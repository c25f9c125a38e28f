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
    let channel = Channel::from_shared(url.to_string())
        .with_context(|| format!("{url:?} is not a valid address (expected http://host:port)"))?
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

/// Runs `sql` and collects the batches.
pub async fn run_query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> anyhow::Result<Vec<RecordBatch>> {
    let info = client.execute(sql.to_string(), None).await?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint
            .ticket
            .context("the server sent an endpoint without a ticket")?;
        batches.extend(client.do_get(ticket).await?.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}
