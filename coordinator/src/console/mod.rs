//! The governance console: server-rendered pages on the coordinator's own
//! listener for governance boards (the request queue and decisions, the
//! audit trail with its verification, an overview with charts) and for
//! researchers (submitting and following their requests). Users log in
//! with the coordinator's own users; every page checks the role on the
//! server, every form carries a CSRF token, every decision goes through
//! the same store and audit log as the Flight SQL actions, and nothing
//! shows a query's data.

mod audit_view;
mod charts;
mod diff;
mod pages;
mod session;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use carrow_governance::{NewRequest, Output, Role};
use carrow_sql::Caller;
use serde::Deserialize;

use crate::service::CoordinatorState;
use session::{LOGIN_COOKIE, Session, Sessions, cookie, same_token, token};

/// What every console handler reads.
struct Console {
    state: Arc<CoordinatorState>,
    sessions: Sessions,
}

type Shared = State<Arc<Console>>;

/// Binds the configured listener and serves the console of `state`, over
/// HTTPS when the console has TLS settings; none when it is not configured.
pub async fn start(
    state: Arc<CoordinatorState>,
) -> Result<Option<carrow_sql::ops::HttpServer>, crate::CoordinatorError> {
    let Some(config) = state.config().console.clone() else {
        return Ok(None);
    };
    let console = Arc::new(Console {
        sessions: Sessions::new(std::time::Duration::from_secs(config.session_minutes * 60)),
        state,
    });
    let app = router(console);
    let bind = |source| crate::CoordinatorError::Bind {
        addr: config.listen.clone(),
        source,
    };
    let server = match config.tls.clone() {
        None => carrow_sql::ops::HttpServer::start(&config.listen, app)
            .await
            .map_err(bind)?,
        // The same kind of certificate and key files as the client
        // listener, served as HTTPS through rustls and hyper.
        Some(files) => {
            let acceptor = tls_acceptor(&files).map_err(|e| {
                crate::CoordinatorError::InvalidConfig(vec![format!("console.tls: {e}")])
            })?;
            carrow_sql::ops::HttpServer::start_with(&config.listen, move |listener, stopped| {
                serve_tls(listener, app, acceptor, stopped)
            })
            .await
            .map_err(bind)?
        }
    };
    tracing::info!(addr = %server.addr, "governance console serving");
    Ok(Some(server))
}

/// Serves `app` over TLS until `stopped` fires.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    acceptor: tokio_rustls::TlsAcceptor,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn tls_acceptor(files: &carrow_sql::tls::ServerTls) -> Result<tokio_rustls::TlsAcceptor, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let certs = CertificateDer::pem_slice_iter(&read(&files.cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cert_file: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key_file)?)
        .map_err(|e| format!("key_file: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/static/console.css", get(stylesheet))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/requests", get(requests).post(submit))
        .route("/requests/new", get(new_request))
        .route("/requests/{id}", get(request_page))
        .route("/requests/{id}/decide", post(decide))
        .route("/audit", get(audit))
        .route("/audit/{query_id}", get(audit_query))
        .route("/overview", get(overview))
        .fallback(not_found)
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(console)
}

/// Headers on every response: a strict Content-Security-Policy (no script
/// at all, styles from this server only), no framing, no sniffing, no referrer.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A page for a signed-in user, or where to go instead.
enum Access {
    Allowed(Session, Role),
    Denied(Response),
}

/// The request's session, if its user has one of `roles`; otherwise the
/// login page (no session) or a 403 page naming the role.
fn require(console: &Console, headers: &HeaderMap, roles: &[Role]) -> Access {
    let Some(session) = console.sessions.of(headers) else {
        return Access::Denied(Redirect::to("/login").into_response());
    };
    let role: Role = match session.caller.role.parse() {
        Ok(r) => r,
        Err(_) => return Access::Denied(StatusCode::FORBIDDEN.into_response()),
    };
    if !roles.contains(&role) {
        let page = pages::forbidden(&session, role);
        return Access::Denied((StatusCode::FORBIDDEN, page).into_response());
    }
    Access::Allowed(session, role)
}

macro_rules! allowed {
    ($console:expr, $headers:expr, $roles:expr) => {
        match require(&$console, &$headers, $roles) {
            Access::Allowed(session, role) => (session, role),
            Access::Denied(response) => return response,
        }
    };
}

/// The refusal of a form whose CSRF token is not the session's.
fn csrf_refusal(session: &Session, sent: &str) -> Option<Response> {
    if same_token(&session.csrf, sent) {
        None
    } else {
        Some((
            StatusCode::FORBIDDEN,
            pages::message(
                Some(session),
                "Form refused",
                "The form did not carry this session's token (CSRF protection): nothing was changed.",
            ),
        )
            .into_response())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a console task does not panic")
}

async fn not_found(State(console): Shared, headers: HeaderMap) -> Response {
    let session = console.sessions.of(&headers);
    (
        StatusCode::NOT_FOUND,
        pages::message(session.as_ref(), "Not found", "There is no such page."),
    )
        .into_response()
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

async fn home(State(console): Shared, headers: HeaderMap) -> Response {
    let Some(session) = console.sessions.of(&headers) else {
        return Redirect::to("/login").into_response();
    };
    match session.caller.role.parse::<Role>() {
        Ok(Role::Governance) => Redirect::to("/overview").into_response(),
        Ok(Role::Researcher) => Redirect::to("/requests").into_response(),
        Ok(role) => (StatusCode::FORBIDDEN, pages::forbidden(&session, role)).into_response(),
        Err(_) => StatusCode::FORBIDDEN.into_response(),
    }
}

async fn login_page() -> Response {
    let csrf = token();
    (
        [(
            header::SET_COOKIE,
            format!(
                "{LOGIN_COOKIE}={csrf}; Path=/login; Max-Age=600; HttpOnly; Secure; SameSite=Strict"
            ),
        )],
        pages::login(&csrf, None),
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: String,
    #[serde(default)]
    csrf: String,
}

async fn login(
    State(console): Shared,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    // Double submit: the form's token must equal the cookie set with it.
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_token(&expected, &form.csrf) {
        return (
            StatusCode::FORBIDDEN,
            pages::message(
                None,
                "Form refused",
                "The login form did not carry its token (CSRF protection).",
            ),
        )
            .into_response();
    }
    let state = console.state.clone();
    let (user, password) = (form.user.clone(), form.password);
    let caller = blocking(move || state.login(&user, &password)).await;
    let Some(caller) = caller else {
        tracing::warn!(user = %form.user, "refused console login");
        return (
            StatusCode::UNAUTHORIZED,
            pages::login(&expected, Some("Unknown user or wrong password.")),
        )
            .into_response();
    };
    tracing::info!(user = %caller.user, role = %caller.role, "console login");
    let id = console.sessions.start(caller);
    (
        [(header::SET_COOKIE, console.sessions.cookie_for(&id))],
        Redirect::to("/"),
    )
        .into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(console): Shared,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(session) = console.sessions.of(&headers)
        && let Some(refused) = csrf_refusal(&session, &form.csrf)
    {
        return refused;
    }
    console.sessions.end(&headers);
    Redirect::to("/login").into_response()
}

#[derive(Deserialize)]
struct StatusFilter {
    status: Option<String>,
}

async fn requests(
    State(console): Shared,
    headers: HeaderMap,
    Query(filter): Query<StatusFilter>,
) -> Response {
    let (session, role) = allowed!(console, headers, &[Role::Governance, Role::Researcher]);
    let state = console.state.clone();
    let mine = (role == Role::Researcher).then(|| session.caller.user.clone());
    let listed = blocking(move || state.requests().list(mine.as_deref())).await;
    match listed {
        Ok(all) => pages::queue(&session, role, &all, filter.status.as_deref()).into_response(),
        Err(e) => server_error(&session, &e.to_string()),
    }
}

#[derive(Deserialize)]
struct Revising {
    revises: Option<i64>,
}

async fn new_request(
    State(console): Shared,
    headers: HeaderMap,
    Query(q): Query<Revising>,
) -> Response {
    let (session, _) = allowed!(console, headers, &[Role::Researcher]);
    let previous = match q.revises {
        Some(id) => {
            let state = console.state.clone();
            match blocking(move || state.requests().get(id)).await {
                Ok(r) if r.requester == session.caller.user => Some(r),
                _ => return not_yours(&session, id),
            }
        }
        None => None,
    };
    pages::new_request(&session, previous.as_ref(), None).into_response()
}

#[derive(Deserialize)]
struct SubmitForm {
    #[serde(default)]
    csrf: String,
    project: String,
    purpose: String,
    output: String,
    sql: String,
    #[serde(default)]
    expires_on: String,
    #[serde(default)]
    max_runs: String,
    #[serde(default)]
    revises: String,
}

async fn submit(
    State(console): Shared,
    headers: HeaderMap,
    Form(form): Form<SubmitForm>,
) -> Response {
    let (session, _) = allowed!(console, headers, &[Role::Researcher]);
    if let Some(refused) = csrf_refusal(&session, &form.csrf) {
        return refused;
    }
    let optional = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    let parsed = (|| -> Result<NewRequest, String> {
        Ok(NewRequest {
            project: form.project.trim().to_string(),
            purpose: form.purpose.clone(),
            output: form.output.parse::<Output>().map_err(|e| e.to_string())?,
            sql: form.sql.clone(),
            expires_on: optional(&form.expires_on),
            max_runs: optional(&form.max_runs)
                .map(|n| {
                    n.parse()
                        .map_err(|_| format!("max runs {n:?} is not a number"))
                })
                .transpose()?,
            revises: optional(&form.revises)
                .map(|n| {
                    n.parse()
                        .map_err(|_| format!("revises {n:?} is not a request number"))
                })
                .transpose()?,
        })
    })();
    let new = match parsed {
        Ok(new) => new,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                pages::new_request(&session, None, Some(&e)),
            )
                .into_response();
        }
    };
    let state = console.state.clone();
    let caller = session.caller.clone();
    match blocking(move || state.submit_request(&caller, &new, "console")).await {
        Ok(request) => Redirect::to(&format!("/requests/{}", request.id)).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            pages::new_request(&session, None, Some(&e.to_string())),
        )
            .into_response(),
    }
}

fn not_yours(session: &Session, id: i64) -> Response {
    (
        StatusCode::NOT_FOUND,
        pages::message(
            Some(session),
            "Not found",
            &format!("There is no request {id} of yours."),
        ),
    )
        .into_response()
}

fn server_error(session: &Session, what: &str) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        pages::message(Some(session), "Something went wrong", what),
    )
        .into_response()
}

async fn request_page(State(console): Shared, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    let (session, role) = allowed!(console, headers, &[Role::Governance, Role::Researcher]);
    let state = console.state.clone();
    let loaded = blocking(move || {
        let request = state.requests().get(id)?;
        let previous = match request.revises {
            Some(old) => Some(state.requests().get(old)?),
            None => None,
        };
        let runs = state.requests().runs(id)?;
        Ok::<_, carrow_governance::GovernanceError>((request, previous, runs))
    })
    .await;
    let (request, previous, runs) = match loaded {
        Ok(found) => found,
        Err(_) => return not_yours(&session, id),
    };
    if role == Role::Researcher && request.requester != session.caller.user {
        return not_yours(&session, id);
    }
    let reads = console.state.reads(&request.sql).await;
    let exemption = console
        .state
        .config()
        .opt_out_exemption(&request.project)
        .map(str::to_string);
    pages::request(&pages::RequestView {
        session: &session,
        role,
        request: &request,
        previous: previous.as_ref(),
        runs: &runs,
        reads: &reads,
        exemption: exemption.as_deref(),
    })
    .into_response()
}

#[derive(Deserialize)]
struct DecideForm {
    #[serde(default)]
    csrf: String,
    decision: String,
    #[serde(default)]
    comment: String,
}

async fn decide(
    State(console): Shared,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<DecideForm>,
) -> Response {
    let (session, _) = allowed!(console, headers, &[Role::Governance]);
    if let Some(refused) = csrf_refusal(&session, &form.csrf) {
        return refused;
    }
    let state = console.state.clone();
    let caller: Caller = session.caller.clone();
    let comment = Some(form.comment.trim().to_string()).filter(|c| !c.is_empty());
    let decided = blocking(move || {
        state.decide_request(&caller, id, &form.decision, comment.as_deref(), "console")
    })
    .await;
    match decided {
        Ok(_) => Redirect::to(&format!("/requests/{id}")).into_response(),
        Err(e) => (
            StatusCode::FORBIDDEN,
            pages::message(Some(&session), "Decision refused", &e.to_string()),
        )
            .into_response(),
    }
}

/// The audit page's filters.
#[derive(Debug, Default, Deserialize)]
pub struct AuditFilters {
    pub user: Option<String>,
    pub role: Option<String>,
    pub project: Option<String>,
    pub request: Option<String>,
    pub node: Option<String>,
    pub outcome: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

async fn audit(
    State(console): Shared,
    headers: HeaderMap,
    Query(filters): Query<AuditFilters>,
) -> Response {
    let (session, _) = allowed!(console, headers, &[Role::Governance]);
    let state = console.state.clone();
    let view = blocking(move || audit_view::AuditPage::load(&state, &filters)).await;
    match view {
        Ok(view) => pages::audit(&session, &view).into_response(),
        Err(e) => server_error(&session, &e),
    }
}

async fn audit_query(
    State(console): Shared,
    headers: HeaderMap,
    Path(query_id): Path<String>,
) -> Response {
    let (session, _) = allowed!(console, headers, &[Role::Governance]);
    let state = console.state.clone();
    let id = query_id.clone();
    let records = blocking(move || audit_view::query_records(&state, &id)).await;
    match records {
        Ok(records) if !records.is_empty() => {
            pages::audit_query(&session, &query_id, &records).into_response()
        }
        Ok(_) => (
            StatusCode::NOT_FOUND,
            pages::message(
                Some(&session),
                "Not found",
                "The audit log has no such query.",
            ),
        )
            .into_response(),
        Err(e) => server_error(&session, &e),
    }
}

async fn overview(State(console): Shared, headers: HeaderMap) -> Response {
    let (session, _) = allowed!(console, headers, &[Role::Governance]);
    let state = console.state.clone();
    let figures = blocking(move || audit_view::Overview::load(&state)).await;
    match figures {
        Ok(figures) => pages::overview(&session, &figures).into_response(),
        Err(e) => server_error(&session, &e),
    }
}

/// Counts by key, largest first then by key.
fn counted(counts: BTreeMap<String, f64>) -> Vec<(String, f64)> {
    let mut items: Vec<(String, f64)> = counts.into_iter().collect();
    items.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    items
}
