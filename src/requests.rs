//! `carrow request`: research requests, through the coordinator (which
//! authenticates the user and keeps the requests).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client;

/// Where and as whom.
#[derive(Args)]
pub struct Login {
    /// The coordinator, e.g. http://127.0.0.1:50050.
    #[arg(long, global = true, default_value = "http://127.0.0.1:50050")]
    pub url: String,
    /// User name to log in with.
    #[arg(long, global = true, default_value = "")]
    pub user: String,
    /// File holding the password; otherwise CARROW_PASSWORD, otherwise a prompt.
    #[arg(long, global = true)]
    pub password_file: Option<PathBuf>,
    /// For an https:// URL: the CA that signed the coordinator's certificate.
    #[arg(long, global = true, env = "CARROW_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum RequestCommand {
    /// Submit SQL for approval (researchers).
    Submit {
        /// The project whose pseudonyms the query uses.
        #[arg(long)]
        project: String,
        /// Why the query is needed.
        #[arg(long)]
        purpose: String,
        /// aggregate (disclosure control applies) or extract (pseudonymous rows).
        #[arg(long, default_value = "aggregate")]
        output: String,
        /// Last day (YYYY-MM-DD) the approval holds.
        #[arg(long)]
        expires: Option<String>,
        /// How many times it may run.
        #[arg(long)]
        max_runs: Option<u32>,
        /// File holding the SQL.
        file: PathBuf,
    },
    /// List requests (researchers see their own; governance users all).
    List,
    /// Show one request with its decisions.
    Show { id: i64 },
    /// Approve a request (governance users; two are needed, never the requester).
    Approve {
        id: i64,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Send a request back for changes (governance users).
    RequestChanges {
        id: i64,
        #[arg(long)]
        comment: String,
    },
    /// Reject a request (governance users).
    Reject {
        id: i64,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Revoke an approved request (governance users).
    Revoke {
        id: i64,
        #[arg(long)]
        comment: Option<String>,
    },
}

/// Runs one request command.
pub async fn run(login: Login, password: String, command: RequestCommand) -> anyhow::Result<()> {
    anyhow::ensure!(!login.user.is_empty(), "give --user");
    let mut flight =
        client::connect_with_ca(&login.url, &login.user, &password, login.ca_file.as_deref())
            .await?;
    let decide = |id: i64, decision: &str, comment: Option<String>| {
        (
            "carrow.request.decide",
            json!({"id": id, "decision": decision, "comment": comment}),
        )
    };
    let (action, body) = match command {
        RequestCommand::Submit {
            project,
            purpose,
            output,
            expires,
            max_runs,
            file,
        } => {
            let sql = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            (
                "carrow.request.submit",
                json!({"project": project, "purpose": purpose, "output": output, "sql": sql,
                       "expires_on": expires, "max_runs": max_runs}),
            )
        }
        RequestCommand::List => ("carrow.request.list", json!({})),
        RequestCommand::Show { id } => ("carrow.request.show", json!({"id": id})),
        RequestCommand::Approve { id, comment } => decide(id, "approve", comment),
        RequestCommand::RequestChanges { id, comment } => {
            decide(id, "request-changes", Some(comment))
        }
        RequestCommand::Reject { id, comment } => decide(id, "reject", comment),
        RequestCommand::Revoke { id, comment } => decide(id, "revoke", comment),
    };
    let answer = client::action(&mut flight, action, &body).await?;
    match answer {
        Value::Array(requests) => print_list(&requests),
        request => print_request(&request),
    }
    Ok(())
}

fn print_list(requests: &[Value]) {
    println!(
        "{:>4}  {:<12} {:<10} {:<9} {:<18} {:>9} {:>7} {:<10}  purpose",
        "id", "requester", "project", "output", "status", "approvals", "runs", "expires"
    );
    for r in requests {
        println!(
            "{:>4}  {:<12} {:<10} {:<9} {:<18} {:>9} {:>7} {:<10}  {}",
            r["id"],
            text(&r["requester"]),
            text(&r["project"]),
            text(&r["output"]),
            text(&r["status"]),
            approvals(r),
            runs(r),
            r["expires_on"].as_str().unwrap_or("-"),
            text(&r["purpose"])
        );
    }
    println!("{} requests", requests.len());
}

fn print_request(r: &Value) {
    println!("request {}: {}", r["id"], text(&r["status"]));
    println!("  requester  {}", text(&r["requester"]));
    println!("  project    {}", text(&r["project"]));
    match r["opt_out_exemption"].as_str() {
        Some(basis) => println!("  opt-outs   exempt from the national data opt-out: {basis}"),
        None => println!("  opt-outs   the national data opt-out applies"),
    }
    println!("  purpose    {}", text(&r["purpose"]));
    println!("  output     {}", text(&r["output"]));
    println!(
        "  expires    {}",
        r["expires_on"].as_str().unwrap_or("never")
    );
    println!("  runs       {}", runs(r));
    println!("  approvals  {} of 2", approvals(r));
    println!("  sql        {}", text(&r["sql"]).trim());
    for d in r["decisions"].as_array().into_iter().flatten() {
        println!(
            "  {} {} by {}{}",
            text(&d["at"]),
            text(&d["decision"]),
            text(&d["reviewer"]),
            d["comment"]
                .as_str()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        );
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn approvals(r: &Value) -> usize {
    r["decisions"].as_array().map_or(0, |d| {
        d.iter().filter(|d| d["decision"] == "approve").count()
    })
}

fn runs(r: &Value) -> String {
    match r["max_runs"].as_u64() {
        Some(max) => format!("{}/{max}", r["runs_used"]),
        None => r["runs_used"].to_string(),
    }
}
