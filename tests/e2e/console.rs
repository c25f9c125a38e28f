//! The governance console in a real browser: headless Chromium from
//! Debian's packages driven by Selenium (`tests/python/console_browser.py`)
//! against a running coordinator over three nodes, with the approved query
//! run through the ADBC driver. The screenshots in the README come from here.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::support::generate;

/// The console's address, from the line the coordinator logs when it starts it.
pub(crate) fn console_addr(log: &std::path::Path) -> std::net::SocketAddr {
    crate::support::logged_addr(
        || std::fs::read_to_string(log).unwrap_or_default(),
        "governance console serving",
    )
}

#[test]
fn the_board_reviews_requests_and_audit_trails_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 1_500, 78);
    let (nodes, coordinator) = crate::coordinator::start_federation(root, |config| {
        config.console = Some(carrow_coordinator::config::ConsoleConfig {
            listen: "127.0.0.1:0".into(),
            tls: None,
            session_minutes: 30,
            node_logs: ["acute", "gp", "council"]
                .into_iter()
                .map(|n| (n.to_string(), root.join(format!("{n}/audit.jsonl"))))
                .collect(),
        });
    });
    let console = console_addr(&root.join("coordinator/coordinator.log"));
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/console_browser.py");
    let out = Command::new(crate::adbc::python())
        .arg(script)
        .args([
            format!("http://localhost:{}", console.port()),
            root.join("secrets").display().to_string(),
            format!("grpc://{}", coordinator.addr),
            shots.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "browser test failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(root.join("coordinator/coordinator.log")).unwrap_or_default()
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &result["checks"];
    let text = |name: &str| c[name].as_str().unwrap_or_default().to_string();

    assert_eq!(text("researcher_lands_on"), "My requests");
    assert_eq!(text("reviewer_lands_on"), "Overview");
    // What users wrote is shown as text, never as markup.
    assert_eq!(
        text("purpose_text"),
        "Care home <b>admissions</b> & <script>alert(\"x\")</script> study"
    );
    assert_eq!(c["purpose_elements"], 0);
    assert_eq!(text("status_after_submit"), "submitted");
    // Changes requested, the request revised: the board sees the diff and
    // the first version is superseded.
    assert_eq!(text("status_after_changes"), "changes-requested");
    assert!(
        text("revision_prefilled").contains("count(*) AS packages"),
        "{c}"
    );
    let diff = text("diff");
    assert!(
        diff.contains("- SELECT k.service_type, COUNT(*) AS PACKAGES FROM council.care_packages")
            && diff.contains("+ SELECT k.service_type, COUNT(DISTINCT k.pid) AS people"),
        "{diff}"
    );
    assert_eq!(text("draft_status"), "superseded");
    assert!(text("reads").contains("council care_packages"), "{c}");
    assert!(text("reads").contains("gp registrations"), "{c}");
    // The requester cannot decide; a reviewer approves once only.
    assert_eq!(text("requester_decides"), "Not for your role");
    assert_eq!(
        text("approvals_after_first"),
        "1 of 2 — two different governance users, never the requester"
    );
    assert_eq!(c["approved_already_notice"], 1);
    let twice = text("second_approval_by_same_reviewer");
    assert!(
        twice.starts_with("Decision refused")
            && twice.contains("two reviewers, never the requester")
            && twice.contains("has already approved"),
        "{twice}"
    );
    assert_eq!(text("status_after_two"), "approved");
    // Forms without this session's token change nothing.
    assert_eq!(text("forged_form"), "Form refused");
    assert_eq!(text("wrong_token_form"), "Form refused");
    assert_eq!(text("status_after_forgeries"), "approved");
    // Planners open no governance page.
    for (page, heading) in c["planner_pages"].as_object().unwrap() {
        assert_eq!(heading, "Not for your role", "{page}");
    }
    // The run, through ADBC, is on the request's page and in the audit
    // trail with each node's fragment, receipt and the disclosure report.
    assert!(c["adbc_rows"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(c["runs"], 1);
    assert_eq!(c["audit_lists_run"], true, "{c}");
    assert_eq!(
        c["fragment_nodes"],
        serde_json::json!(["council", "gp"]),
        "{c}"
    );
    assert!(
        c["fragment_receipts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.as_str().is_some_and(|r| r.starts_with("n-"))),
        "{c}"
    );
    assert!(text("disclosure").contains("\"rows_released\""), "{c}");
    assert!(text("edited_sql").contains("approved requests only"), "{c}");
    assert!(!text("coordinator_log").contains("no outcome"), "{c}");
    assert!(text("coordinator_log").contains("intact"), "{c}");
    assert!(text("reconciliation").contains("no problems"), "{c}");
    assert!(text("queue").contains("approved"), "{c}");
    assert_eq!(c["charts"], 5, "{c}");
    let overview = text("overview_text");
    assert!(overview.contains("approved requests only"), "{overview}");
    // Every decision made in the console is in the coordinator's audit
    // log, as the CLI's are, refusals included.
    let log = std::fs::read_to_string(root.join("coordinator/state/audit.jsonl")).unwrap();
    let console_records: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["body"].clone())
        .filter(|b| b["via"] == "console")
        .collect();
    let count = |action: &str, outcome: &str| {
        console_records
            .iter()
            .filter(|b| b["action"] == action && b["outcome"] == outcome)
            .count()
    };
    assert_eq!(count("submit", "ok"), 2, "{console_records:?}");
    assert_eq!(count("request-changes", "ok"), 1, "{console_records:?}");
    assert_eq!(count("approve", "ok"), 2, "{console_records:?}");
    assert_eq!(count("approve", "refused"), 1, "{console_records:?}");
    for shot in ["queue", "request", "audit", "audit-query", "overview"] {
        assert!(shots.join(format!("{shot}.png")).exists(), "{shot}");
    }
    drop((nodes, coordinator));
}
