//! Listeners beside the main one (metrics, admin): served through an edge of their own, with
//! the main port's deadlines (a request head, the keep-alive idle time, lingering close) and
//! small connection caps, HTTP/1.1 only; so idle or half-open sockets to them are cut off and
//! can never take the descriptors the main port needs.

use std::sync::Arc;

use axum::{
    Router,
    extract::Request,
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use tokio::net::TcpListener;

use crate::{ctx::Ctx, edge::Edge, http_api::ApiError};

/// Serve `app` on `listener` until shutdown.
pub(crate) fn serve(
    ctx: &Arc<Ctx>,
    listener: TcpListener,
    app: Router,
    what: &'static str,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "{what} listening.");
    let edge = Edge::beside(&ctx.settings.edge, &ctx.metrics);
    let app = app
        .layer(axum::middleware::from_fn(crate::http_api::refuse_over_limit))
        .layer(axum::middleware::from_fn(json_refusals));
    let (metrics, stop) = (ctx.metrics.clone(), ctx.shutdown.clone());
    let grace = ctx.settings.shutdown_grace_period;
    tokio::spawn(async move {
        crate::listen::serve(&metrics, grace, edge, listener, app, stop, None).await;
    });
    Ok(())
}

/// Every refusal as JSON, as on the main port.
async fn json_refusals(request: Request, next: Next) -> Response {
    crate::http_api::json_refusal(next.run(request).await).await
}

/// `app`, answering only requests whose `Host` names one of `allowed` (lowercase, without
/// port; empty allows any). A page on another site that points its own name at this address
/// (DNS rebinding) sends its own name, and is refused with 421 before anything else runs.
pub(crate) fn checking_host(app: Router, allowed: &[String]) -> Router {
    if allowed.is_empty() {
        return app;
    }
    let allowed: Arc<[String]> = allowed.into();
    app.layer(axum::middleware::from_fn(move |request: Request, next: Next| {
        let allowed = allowed.clone();
        async move {
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|value| value.to_str().ok())
                .map(host_name)
                .map(|name| name.to_ascii_lowercase());
            match host {
                Some(name) if allowed.contains(&name) => next.run(request).await,
                _ => refused_host(),
            }
        }
    }))
}

fn refused_host() -> Response {
    let message =
        "This listener does not answer to that Host; list the name in admin.allowed_hosts";
    ApiError::new(StatusCode::MISDIRECTED_REQUEST, message).into_response()
}

/// The name part of a `Host` value: `example.com:6005` -> `example.com`, `[::1]:6005` -> `::1`.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn a_host_name_is_read_without_its_port() {
        assert_eq!(host_name("example.com:6005"), "example.com");
        assert_eq!(host_name("example.com"), "example.com");
        assert_eq!(host_name("[::1]:6005"), "::1");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
    }
}
