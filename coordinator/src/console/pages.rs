//! The console's pages, as maud templates: every value users wrote (SQL,
//! purposes, comments, names) is escaped by construction.

use carrow_governance::requests::{APPROVALS_NEEDED, RunRecord};
use carrow_governance::{Request, Role};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::audit_view::{AuditPage, Overview};
use super::charts;
use super::diff::{self, Line};
use super::session::Session;

fn layout(session: Option<&Session>, title: &str, body: Markup) -> Markup {
    let role = session.and_then(|s| s.caller.role.parse::<Role>().ok());
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Carrow governance" }
                link rel="stylesheet" href="/static/console.css";
            }
            body {
                header {
                    span.brand { "Carrow governance" }
                    @if let Some(session) = session {
                        nav {
                            @if role == Some(Role::Governance) {
                                a href="/overview" { "Overview" }
                                a href="/requests" { "Requests" }
                                a href="/audit" { "Audit" }
                            }
                            @if role == Some(Role::Researcher) {
                                a href="/requests" { "My requests" }
                                a href="/requests/new" { "New request" }
                            }
                        }
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            span.who { (session.caller.user) " (" (session.caller.role) ")" }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The login form, with its double-submit token.
pub fn login(csrf: &str, problem: Option<&str>) -> Markup {
    layout(
        None,
        "Log in",
        html! {
            @if let Some(problem) = problem { p.problem { (problem) } }
            form.card method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                label { "User" input type="text" name="user" id="user" autocomplete="username" required; }
                label { "Password" input type="password" name="password" id="password" autocomplete="current-password" required; }
                button type="submit" id="login" { "Log in" }
            }
        },
    )
}

/// A page that only says something.
pub fn message(session: Option<&Session>, title: &str, text: &str) -> Markup {
    layout(session, title, html! { p.problem { (text) } })
}

/// What a user whose role has no such page sees.
pub fn forbidden(session: &Session, role: Role) -> Markup {
    message(
        Some(session),
        "Not for your role",
        &format!(
            "{} is a {role}: these pages are for governance users (and researchers' own requests). \
             Planners use Flight SQL clients.",
            session.caller.user
        ),
    )
}

fn status_badge(status: &str) -> Markup {
    html! { span class={"status " (status)} { (status) } }
}

/// The request queue: every request (governance) or one's own (researcher).
pub fn queue(session: &Session, role: Role, all: &[Request], status: Option<&str>) -> Markup {
    let statuses = [
        "submitted",
        "changes-requested",
        "approved",
        "rejected",
        "revoked",
        "superseded",
    ];
    let shown: Vec<&Request> = all
        .iter()
        .filter(|r| status.is_none_or(|s| s.is_empty() || r.status == s))
        .collect();
    let title = if role == Role::Governance {
        "Requests"
    } else {
        "My requests"
    };
    layout(
        Some(session),
        title,
        html! {
            nav.filters {
                a href="/requests" class=[status.is_none().then_some("current")] { "all (" (all.len()) ")" }
                @for s in statuses {
                    @let n = all.iter().filter(|r| r.status == s).count();
                    a href={"/requests?status=" (s)} class=[(status == Some(s)).then_some("current")] {
                        (s) " (" (n) ")"
                    }
                }
            }
            table #queue {
                thead { tr { th { "#" } th { "status" } th { "requester" } th { "project" } th { "output" } th { "purpose" } th { "approvals" } th { "submitted" } } }
                tbody {
                    @for r in &shown {
                        tr {
                            td { a href={"/requests/" (r.id)} { (r.id) } }
                            td { (status_badge(&r.status)) }
                            td { (r.requester) }
                            td { (r.project) }
                            td { (r.output_name()) }
                            td.purpose { (r.purpose) }
                            td { (r.approvals()) " of " (APPROVALS_NEEDED) }
                            td { (r.created_at.get(..16).unwrap_or(&r.created_at).replace('T', " ")) }
                        }
                    }
                }
            }
            @if shown.is_empty() { p.empty { "No requests here." } }
        },
    )
}

/// The researcher's form for a new request (or a revision of `previous`).
pub fn new_request(session: &Session, previous: Option<&Request>, problem: Option<&str>) -> Markup {
    let title = match previous {
        Some(p) => format!("Revise request {}", p.id),
        None => "New request".to_string(),
    };
    layout(
        Some(session),
        &title,
        html! {
            @if let Some(problem) = problem { p.problem { (problem) } }
            form.card method="post" action="/requests" {
                input type="hidden" name="csrf" value=(session.csrf);
                @if let Some(p) = previous { input type="hidden" name="revises" value=(p.id); }
                label { "Project" input type="text" name="project" id="project" required value=(previous.map_or("", |p| p.project.as_str())); }
                label { "Purpose" textarea name="purpose" id="purpose" rows="3" required { (previous.map_or("", |p| p.purpose.as_str())) } }
                label { "Output"
                    select name="output" id="output" {
                        option value="aggregate" selected[previous.is_none_or(|p| p.output_name() == "aggregate")] { "aggregate (disclosure control applies)" }
                        option value="extract" selected[previous.is_some_and(|p| p.output_name() == "extract")] { "extract (pseudonymous rows)" }
                    }
                }
                label { "SQL" textarea name="sql" id="sql" rows="8" required { (previous.map_or("", |p| p.sql.as_str())) } }
                label { "Expires on (YYYY-MM-DD, optional)" input type="text" name="expires_on" id="expires_on" value=(previous.and_then(|p| p.expires_on.clone()).unwrap_or_default()); }
                label { "Maximum runs (optional)" input type="text" name="max_runs" id="max_runs" value=(previous.and_then(|p| p.max_runs).map(|n| n.to_string()).unwrap_or_default()); }
                button type="submit" id="submit" { "Submit for review" }
            }
        },
    )
}

/// What the request page shows.
pub struct RequestView<'a> {
    pub session: &'a Session,
    pub role: Role,
    pub request: &'a Request,
    pub previous: Option<&'a Request>,
    pub runs: &'a [RunRecord],
    pub reads: &'a Result<crate::service::TableReads, String>,
    pub exemption: Option<&'a str>,
}

/// One request: what it asks, what it reads, its history and its runs.
pub fn request(view: &RequestView<'_>) -> Markup {
    let r = view.request;
    let me = &view.session.caller.user;
    let approved_by_me = r
        .decisions
        .iter()
        .any(|d| &d.reviewer == me && d.decision == "approve");
    layout(
        Some(view.session),
        &format!("Request {}", r.id),
        html! {
            dl.facts {
                dt { "status" } dd #status { (status_badge(&r.status)) }
                dt { "requester" } dd { (r.requester) }
                dt { "project" } dd { (r.project)
                    @if let Some(basis) = view.exemption { " — exempt from the national data opt-out: " (basis) } }
                dt { "purpose" } dd #purpose { (r.purpose) }
                dt { "output" } dd { (r.output_name()) }
                dt { "expires on" } dd { (r.expires_on.clone().unwrap_or_else(|| "no expiry".into())) }
                dt { "runs" } dd { (r.runs_used) " used of " (r.max_runs.map_or("unlimited".to_string(), |n| n.to_string())) }
                dt { "approvals" } dd #approvals { (r.approvals()) " of " (APPROVALS_NEEDED)
                    " — two different governance users, never the requester" }
                dt { "submitted" } dd { (r.created_at) }
                @if let Some(old) = r.revises { dt { "revises" } dd { a href={"/requests/" (old)} { "request " (old) } } }
            }
            h2 { "SQL as submitted" }
            pre.sql #sql { (r.sql) }
            h2 { "Canonical form (what runs are matched on)" }
            pre.sql { (r.canonical_sql) }
            @if let Some(previous) = view.previous {
                h2 { "Changes since request " (previous.id) }
                pre.diff #diff {
                    @for line in diff::lines(&previous.canonical_sql, &r.canonical_sql) {
                        @match line {
                            Line::Same(t) => { span.same { "  " (t) } "\n" }
                            Line::Removed(t) => { span.removed { "- " (t) } "\n" }
                            Line::Added(t) => { span.added { "+ " (t) } "\n" }
                        }
                    }
                }
            }
            h2 { "What it reads" }
            @match view.reads {
                Ok(reads) => {
                    table #reads {
                        thead { tr { th { "node" } th { "table" } th { "columns" } } }
                        tbody { @for (node, table, columns) in reads { tr { td { (node) } td { (table) } td { (columns.join(", ")) } } } }
                    }
                }
                Err(e) => { p.problem { "It does not plan against today's catalog: " (e) } }
            }
            h2 { "Decisions" }
            table #decisions {
                thead { tr { th { "when" } th { "reviewer" } th { "decision" } th { "comment" } } }
                tbody {
                    @for d in &r.decisions {
                        tr { td { (d.at) } td { (d.reviewer) } td { (d.decision) } td.comment { (d.comment.clone().unwrap_or_default()) } }
                    }
                }
            }
            @if r.decisions.is_empty() { p.empty { "No decision yet." } }
            @if view.role == Role::Governance {
                @if &r.requester == me {
                    p.notice #own { "You submitted this request: another two governance users decide on it." }
                } @else if approved_by_me && r.status == "submitted" {
                    p.notice #approved-already { "You have approved this request; it needs another governance user's approval." }
                }
                form.card #decide method="post" action={"/requests/" (r.id) "/decide"} {
                    input type="hidden" name="csrf" value=(view.session.csrf);
                    label { "Decision"
                        select name="decision" id="decision" {
                            option value="approve" { "approve" }
                            option value="request-changes" { "request changes" }
                            option value="reject" { "reject" }
                            option value="revoke" { "revoke" }
                        }
                    }
                    label { "Comment" textarea name="comment" id="comment" rows="3" {} }
                    button type="submit" id="record" { "Record decision" }
                }
            }
            @if view.role == Role::Researcher && r.status == "changes-requested" {
                p { a #revise href={"/requests/new?revises=" (r.id)} { "Revise this request" } }
            }
            h2 { "Runs" }
            table #runs {
                thead { tr { th { "query" } th { "status" } th { "started" } th { "finished" } } }
                tbody {
                    @for run in view.runs {
                        tr {
                            td { @if view.role == Role::Governance { a href={"/audit/" (run.query_id)} { (run.query_id) } } @else { (run.query_id) } }
                            td { (run.status) } td { (run.started_at) } td { (run.finished_at.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
            @if view.runs.is_empty() { p.empty { "Not run yet." } }
        },
    )
}

/// Every query attempt, filtered, with the logs' verification.
pub fn audit(session: &Session, page: &AuditPage) -> Markup {
    layout(
        Some(session),
        "Audit",
        html! {
            section.verification {
                h2 { "Verification" }
                p #coordinator-log {
                    "Coordinator log: "
                    @match &page.coordinator_log {
                        Ok(found) => { span.ok { (found) } }
                        Err(e) => { span.bad { (e) } }
                    }
                }
                table #held {
                    thead { tr { th { "node" } th { "latest checkpoint the coordinator holds" } th { "records" } th { "Merkle root" } th { "key" } th { "signature" } } }
                    tbody {
                        @for h in &page.held {
                            tr { td { (h.node) } td { (h.time) } td { (h.size) } td { code { (h.root) "…" } } td { code { (h.key) "…" } }
                                td { @if h.verifies { span.ok { "verifies" } } @else { span.bad { "does not verify" } } } }
                        }
                    }
                }
                @match &page.reconciliation {
                    None => { p.empty { "No copies of the nodes' logs are configured ([console] node_logs): run carrow audit reconcile with them." } }
                    Some(Ok(r)) => {
                        p #reconciliation {
                            "Reconciled with the nodes' logs: " (r.matched) " fragments in both, " (r.checkpoints)
                            " checkpoints verified, " (r.proofs) " consistency proofs; "
                            @if r.problems.is_empty() { span.ok { "no problems" } } @else { span.bad { (r.problems.len()) " problems" } }
                        }
                        @if !r.problems.is_empty() { ul.problems { @for p in &r.problems { li { (p) } } } }
                        @if !r.notes.is_empty() { ul.notes { @for n in &r.notes { li { (n) } } } }
                    }
                    Some(Err(e)) => { p.bad { "Reconciliation failed: " (e) } }
                }
            }
            form.filters method="get" action="/audit" {
                @for (name, value) in &page.filters {
                    label { (name) input type="text" name=(name) value=(value); }
                }
                button type="submit" { "Filter" }
            }
            p { (page.total) " query attempts match" @if page.total > page.attempts.len() { " (newest " (page.attempts.len()) " shown)" } "." }
            table #attempts {
                thead { tr { th { "time (UTC)" } th { "query" } th { "user" } th { "role" } th { "project" } th { "request" } th { "outcome" } th { "rows" } th { "SQL" } } }
                tbody {
                    @for a in &page.attempts {
                        tr {
                            td { (a.time) }
                            td { a href={"/audit/" (a.query_id)} { (a.query_id) } }
                            td { (a.user) } td { (a.role) } td { (a.project) }
                            td { @if let Some(r) = a.request { a href={"/requests/" (r)} { (r) } } }
                            td { span class={"outcome " (a.outcome)} { (a.outcome) } }
                            td { (a.rows.map(|r| r.to_string()).unwrap_or_default()) }
                            td.sql { (a.sql) }
                        }
                    }
                }
            }
        },
    )
}

fn field(body: &Value, name: &str) -> String {
    super::audit_view::text(&body[name])
}

/// One query attempt: its SQL, fragments and receipts, reports.
pub fn audit_query(session: &Session, query_id: &str, records: &[(String, Value)]) -> Markup {
    let (time, last) = records.last().expect("at least one record");
    let fragments = last["fragments"].as_array().cloned().unwrap_or_default();
    layout(
        Some(session),
        &format!("Query {query_id}"),
        html! {
            dl.facts {
                dt { "recorded" } dd { (time) }
                dt { "user" } dd { (field(last, "user")) " (" (field(last, "role")) ")" }
                dt { "project" } dd { (field(last, "project")) }
                dt { "request" } dd { (field(last, "request")) }
                dt { "outcome" } dd #outcome { (field(last, "outcome")) }
                @if !field(last, "error").is_empty() { dt { "error" } dd { (field(last, "error")) } }
                dt { "rows released" } dd { (field(last, "rows")) }
                dt { "duration (ms)" } dd { (field(last, "duration_ms")) }
                dt { "trace id" } dd { code { (field(last, "trace_id")) } }
            }
            h2 { "SQL" }
            pre.sql { (field(last, "sql")) }
            h2 { "Fragments each node served, with its receipt" }
            table #fragments {
                thead { tr { th { "node" } th { "status" } th { "rows" } th { "ms" } th { "node's query" } th { "node's audit head" } th { "node's checkpoint" } th { "SQL sent" } } }
                tbody {
                    @for f in &fragments {
                        tr {
                            td { (field(f, "node")) } td { (field(f, "status")) } td { (field(f, "rows")) } td { (field(f, "elapsed_ms")) }
                            td { code { (field(f, "node_query_id")) } }
                            td { code { (field(f, "node_audit_head").get(..16).unwrap_or("")) } }
                            td { code { (field(f, "node_checkpoint").split_whitespace().nth(2).map(|s| format!("{s} records")).unwrap_or_default()) } }
                            td.sql { (field(f, "sql")) }
                        }
                    }
                }
            }
            @if fragments.is_empty() { p.empty { "No fragment was sent." } }
            h2 { "Disclosure report" }
            pre #disclosure { (serde_json::to_string_pretty(&last["disclosure"]).unwrap_or_default()) }
            h2 { "Coverage" }
            pre #coverage { (serde_json::to_string_pretty(&last["nodes"]).unwrap_or_default()) }
            p.empty { "The console shows what was asked and what was released, never a result's data." }
        },
    )
}

/// The board's overview: charts drawn as SVG on the server.
pub fn overview(session: &Session, figures: &Overview) -> Markup {
    layout(
        Some(session),
        "Overview",
        html! {
            div.charts {
                (charts::stacked("Query attempts per day, by role", &figures.roles, &figures.per_day))
                (charts::bars("Refusals by rule", &figures.refusals_by_rule))
                (charts::bars("Rows nodes sent, by node", &figures.rows_by_node))
                (charts::bars("Requests by status", &figures.requests_by_status))
                (charts::bars("Small-population queries per user (cells suppressed or below the threshold)", &figures.small_population_by_user))
            }
        },
    )
}
