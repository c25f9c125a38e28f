//! Console sessions: a random id in a `Secure`, `HttpOnly`,
//! `SameSite=Strict` cookie that expires, and a CSRF token per session
//! that every form carries back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use carrow_sql::Caller;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "carrow_session";
/// The login form's double-submit cookie (no session exists yet).
pub const LOGIN_COOKIE: &str = "carrow_login";

/// One logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    /// Every form of this session carries it; a POST without it is refused.
    pub csrf: String,
    expires: Instant,
}

/// The console's sessions, in memory: a restart logs everyone out.
#[derive(Debug)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
    lifetime: Duration,
}

/// A new random token (256 bits, hex).
pub fn token() -> String {
    carrow_sql::flight::random_hex(32)
}

impl Sessions {
    pub fn new(lifetime: Duration) -> Self {
        Self {
            by_id: Mutex::new(HashMap::new()),
            lifetime,
        }
    }

    /// Starts a session for `caller`; returns its id.
    pub fn start(&self, caller: Caller) -> String {
        let id = token();
        let session = Session {
            caller,
            csrf: token(),
            expires: Instant::now() + self.lifetime,
        };
        let mut map = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        map.insert(id.clone(), session);
        id
    }

    /// The live session the request's cookie names.
    pub fn of(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let map = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&id).filter(|s| s.expires > Instant::now()).cloned()
    }

    /// Ends the request's session.
    pub fn end(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            self.by_id
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
    }

    /// The `Set-Cookie` value of session `id`.
    pub fn cookie_for(&self, id: &str) -> String {
        format!(
            "{SESSION_COOKIE}={id}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
            self.lifetime.as_secs()
        )
    }
}

/// The value of cookie `name` in the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Compares two tokens in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_ends_or_expires() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let caller = Caller {
            user: "rita".into(),
            role: "researcher".into(),
        };
        let id = sessions.start(caller.clone());
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            format!("other=1; {SESSION_COOKIE}={id}").parse().unwrap(),
        );
        let session = sessions.of(&headers).unwrap();
        assert_eq!(session.caller, caller);
        assert_eq!(session.csrf.len(), 64);
        let set = sessions.cookie_for(&id);
        for part in ["HttpOnly", "Secure", "SameSite=Strict", "Max-Age=60"] {
            assert!(set.contains(part), "{set}");
        }
        sessions.end(&headers);
        assert!(sessions.of(&headers).is_none());

        let expired = Sessions::new(Duration::ZERO);
        let id = expired.start(caller);
        headers.insert(
            axum::http::header::COOKIE,
            format!("{SESSION_COOKIE}={id}").parse().unwrap(),
        );
        assert!(expired.of(&headers).is_none());
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("a", "ab"));
    }
}
