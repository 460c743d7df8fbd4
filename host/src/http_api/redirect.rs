//! The plain-HTTP listener beside a TLS port (`ssl.redirect_http`): every request is sent to
//! the same host and path over HTTPS.

use axum::{
    Router,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Redirect, Response},
};

use super::ApiError;

/// The longest `Host` header taken (a DNS name is at most 253 characters, plus a port).
const MAX_HOST: usize = 260;

/// A router that redirects everything to `https://<host>:<port><path>`.
pub(crate) fn router(port: u16) -> Router {
    Router::new()
        .fallback(move |headers: HeaderMap, uri: Uri| async move { redirect(&headers, &uri, port) })
}

fn redirect(headers: &HeaderMap, uri: &Uri, port: u16) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    // The host (without its port) goes into a Location header: only a name or an address.
    let name = match host.rsplit_once(':') {
        Some((name, digits)) if !name.ends_with(']') || host.starts_with('[') => {
            if digits.bytes().all(|b| b.is_ascii_digit()) { name } else { host }
        }
        _ => host,
    };
    let valid = !name.is_empty()
        && host.len() <= MAX_HOST
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b));
    if !valid {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "A Host header is needed to redirect to HTTPS",
        )
        .into_response();
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let target = if port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{port}{path}")
    };
    Redirect::permanent(&target).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: &str, path: &str, port: u16) -> (StatusCode, Option<String>) {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, host.parse().unwrap());
        let response = redirect(&headers, &path.parse().unwrap(), port);
        let location =
            response.headers().get(header::LOCATION).map(|l| l.to_str().unwrap().to_string());
        (response.status(), location)
    }

    #[test]
    fn requests_go_to_the_same_host_and_path_over_https() {
        assert_eq!(
            location("example.com:8080", "/apps/1/events?a=b", 6001),
            (
                StatusCode::PERMANENT_REDIRECT,
                Some("https://example.com:6001/apps/1/events?a=b".into())
            )
        );
        assert_eq!(
            location("example.com", "/", 443),
            (StatusCode::PERMANENT_REDIRECT, Some("https://example.com/".into()))
        );
        assert_eq!(
            location("[::1]:80", "/up", 6001),
            (StatusCode::PERMANENT_REDIRECT, Some("https://[::1]:6001/up".into()))
        );
        assert_eq!(location("evil.com/x", "/", 443).0, StatusCode::BAD_REQUEST);
        assert_eq!(location("a b", "/", 443).0, StatusCode::BAD_REQUEST);
    }
}
