//! Browser safety: what keeps a web page of another site from driving the API through the
//! user's browser, which needs no token when none is set.
//!
//! - **Cross-site requests**: an unsafe method (anything but GET, HEAD, OPTIONS, TRACE) is
//!   refused (403, `cross_origin`) when its `Origin` is not the server's own (the origin's
//!   host and port are the request's `Host`, or its host is one given to
//!   [`Http::allowed_hosts`](crate::Http::allowed_hosts)), or, without an `Origin`, when
//!   `Sec-Fetch-Site` says `cross-site` or `same-site`. Clients other than browsers send
//!   neither and pass.
//! - **Simple requests**: POST, PUT, DELETE and PATCH with a body must declare it as
//!   `application/json` (415, `unsupported_media_type`): a page can send `text/plain`,
//!   form data or multipart to any site without asking, never JSON.
//! - **DNS rebinding**: without a token, the `Host` must be an IP address (a page cannot make
//!   the browser send one of another origin), `localhost`, or a name given to
//!   [`Http::allowed_hosts`](crate::Http::allowed_hosts) (403, `host_not_allowed`); a page
//!   of a name the attacker rebinds to this server sends that name. With a token the page has
//!   no credential to read with, and any `Host` passes. `/health` and `/ready` are not checked.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, Method, StatusCode};

use crate::error::ApiError;

/// One entry of the allowed hosts: a name or address, with or without a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    /// Any host (`*`).
    Any,
    /// This host (lower case, without a trailing dot; IPv6 in brackets), on any port when
    /// `port` is `None`.
    Host { host: String, port: Option<u16> },
}

impl HostPattern {
    /// Parses `localhost`, `example.com:8443`, `[::1]`, `*`; `None` when it is none of those.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text == "*" {
            return Some(Self::Any);
        }
        let (host, port) = split_authority(text)?;
        Some(Self::Host { host, port })
    }

    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        match self {
            Self::Any => true,
            Self::Host { host: h, port: p } => h == host && (p.is_none() || *p == port),
        }
    }
}

/// What the checks need.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// The hosts given to `Http::allowed_hosts`.
    pub allowed: Arc<[HostPattern]>,
    /// Whether `Host` is checked: only without a token.
    pub check_host: bool,
}

/// `host[:port]` in lower case without a trailing dot, or `None` when it is no authority.
fn split_authority(text: &str) -> Option<(String, Option<u16>)> {
    if text.is_empty() || text.contains(['/', '@', '?', '#']) {
        return None;
    }
    let authority: Authority = text.parse().ok()?;
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some((host, authority.port_u16()))
}

/// Whether `host` (as [`split_authority`] gives it) is an IP address.
fn is_ip(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
}

/// The paths served whatever their `Host`: probes read nothing.
const ANY_HOST: [&str; 2] = ["/health", "/ready"];

/// Runs the three checks, in this order: `Host`, the origin of an unsafe method, the type of
/// a body.
pub(crate) fn check(policy: &Policy, request: &Request) -> Result<(), ApiError> {
    let headers = request.headers();
    let host = request_host(request);
    if policy.check_host && !ANY_HOST.contains(&request.uri().path()) {
        check_host(policy, host)?;
    }
    let unsafe_method = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if unsafe_method {
        check_origin(policy, headers, host)?;
        check_content_type(headers)?;
    }
    Ok(())
}

/// The request's `Host` (or the authority of an absolute request target).
fn request_host(request: &Request) -> Option<&str> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.as_str());
    }
    request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
}

/// Whether `text` is plainly a host every server answers to: an IP address or `localhost`,
/// with or without a port. Checked without allocating: it is what nearly every request sends.
fn plainly_local(text: &str) -> bool {
    let host = match text.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => text,
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::Ipv4Addr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
}

fn check_host(policy: &Policy, host: Option<&str>) -> Result<(), ApiError> {
    // HTTP/1.0 without `Host`: no browser sends that.
    let Some(text) = host else {
        return Ok(());
    };
    if plainly_local(text) {
        return Ok(());
    }
    let allowed = match split_authority(text) {
        Some((host, port)) => {
            is_ip(&host)
                || host == "localhost"
                || policy.allowed.iter().any(|p| p.matches(&host, port))
        }
        None => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            format!(
                "the Host `{text}` is not one of this server's names (an IP address, localhost, \
                 or a name given to Http::allowed_hosts): a page whose name points at this server \
                 (DNS rebinding) cannot read it; add the name with Http::allowed_hosts, or set a token"
            ),
        ))
    }
}

fn check_origin(policy: &Policy, headers: &HeaderMap, host: Option<&str>) -> Result<(), ApiError> {
    let refuse = |what: String| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            format!(
                "{what}: this API takes unsafe requests (POST, PUT, DELETE, PATCH) from its own \
                 pages only; to serve pages of another origin, add its host with Http::allowed_hosts"
            ),
        )
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let text = origin.to_str().unwrap_or("");
        if own_origin(policy, text, host) {
            return Ok(());
        }
        return Err(refuse(format!(
            "the request comes from the page origin `{text}`, not this server's"
        )));
    }
    match headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some(site @ ("cross-site" | "same-site")) => Err(refuse(format!(
            "the browser says the request comes from a page of another origin (Sec-Fetch-Site: {site})"
        ))),
        _ => Ok(()),
    }
}

/// Whether the `Origin` `origin` is the server's: its host and port are the request's `Host`,
/// or its host is one given to `Http::allowed_hosts` (`*` does not count).
fn own_origin(policy: &Policy, origin: &str, host: Option<&str>) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        // `null` (a sandboxed page, a redirect across origins) or garbage.
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    let Some((origin_host, origin_port)) = split_authority(authority) else {
        return false;
    };
    let origin_port = origin_port.unwrap_or(default_port);
    if let Some((host, port)) = host.and_then(split_authority) {
        if host == origin_host && port.unwrap_or(default_port) == origin_port {
            return true;
        }
    }
    policy.allowed.iter().any(|p| match p {
        HostPattern::Any => false,
        HostPattern::Host { .. } => p.matches(&origin_host, Some(origin_port)),
    })
}

/// A body, if any, must be JSON: `application/json` or `application/<anything>+json`,
/// with parameters (`; charset=utf-8`) or not.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    if !has_body {
        return Ok(());
    }
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let essence = given
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase());
    let json = essence.as_deref().is_some_and(|t| {
        t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
    });
    if json {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        match given {
            Some(t) => format!(
                "the body is declared as `{t}`: send it as JSON, with `Content-Type: application/json`"
            ),
            None => {
                "the body has no Content-Type: send it as JSON, with `Content-Type: application/json`"
                    .to_string()
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> Policy {
        Policy {
            allowed: allowed
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            check_host: true,
        }
    }

    #[test]
    fn hosts() {
        let p = policy(&["api.example.com", "other.example:8443"]);
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "localhost.:80",
            "[::1]:8080",
            "10.1.2.3:8080",
            "api.example.com",
            "Api.Example.Com:9000",
            "other.example:8443",
        ] {
            assert!(check_host(&p, Some(ok)).is_ok(), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:8080",
            "other.example:8080",
            "127.0.0.1.nip.io:8080",
            "localhost.evil.example",
            "",
            "a@b",
        ] {
            assert!(check_host(&p, Some(refused)).is_err(), "{refused}");
        }
        assert!(check_host(&policy(&["*"]), Some("evil.example")).is_ok());
    }

    #[test]
    fn plainly_local_hosts() {
        for yes in [
            "127.0.0.1:8080",
            "localhost",
            "LocalHost:1",
            "[::1]:80",
            "[::1]",
            "10.0.0.1",
        ] {
            assert!(plainly_local(yes), "{yes}");
        }
        for no in [
            "localhost.",
            "evil.example",
            "127.0.0.1.nip.io",
            "::1",
            "127.0.0.1:x",
            "",
        ] {
            assert!(!plainly_local(no), "{no}");
        }
    }

    #[test]
    fn origins() {
        let p = policy(&["public.example", "*"]);
        let host = Some("127.0.0.1:8080");
        assert!(own_origin(&p, "http://127.0.0.1:8080", host));
        assert!(!own_origin(&p, "http://127.0.0.1:8081", host));
        assert!(!own_origin(&p, "http://evil.example", host));
        assert!(!own_origin(&p, "null", host));
        assert!(own_origin(&p, "https://public.example", host));
        assert!(own_origin(&p, "http://localhost", Some("localhost:80")));
        assert!(own_origin(&p, "https://x.example", Some("x.example")));
        assert!(!own_origin(&p, "https://x.example", Some("x.example:80")));
    }
}
