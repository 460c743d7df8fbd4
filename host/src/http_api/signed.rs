//! The extractors of an authenticated HTTP API request, so a handler states what it needs: a
//! write takes [`Signed`] (its app, the verified signature and the body), a read takes
//! [`SignedQuery`] (its app and the verified query).

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, RawPathParams, Request},
    http::{header, request::Parts},
};

use super::{ApiError, auth};
use crate::{apps::App, ctx::Ctx, metrics::Metrics};

/// A write request that passed authentication, with its body.
///
/// Checked in the order that costs an unauthenticated or oversized request the least: the
/// checks that need no body first (the signature covers the query, `body_md5` included); a
/// `Content-Length` over `http_api.request_limit_in_mb` refused before a byte of the body is
/// read; then the body, read up to the limit within `edge.body_timeout_ms`; then `body_md5`. A
/// refused body is left unread; the connection's lingering close lets the answer reach the
/// client.
#[derive(Debug)]
pub(crate) struct Signed {
    /// The app named in the path, whose key signed the request.
    pub app: Arc<App>,
    /// The body, whose `body_md5` matched.
    pub body: Bytes,
}

/// A read request that passed authentication (its body is not read).
#[derive(Debug)]
pub(crate) struct SignedQuery {
    /// The app named in the path, whose key signed the request.
    pub app: Arc<App>,
    /// The query parameters (auth ones included).
    pub query: HashMap<String, String>,
}

/// The app id of the route's `{app_id}`.
async fn app_id(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<String, ApiError> {
    let params = RawPathParams::from_request_parts(parts, ctx)
        .await
        .map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    params
        .iter()
        .find(|(name, _)| *name == "app_id")
        .map(|(_, value)| value.to_string())
        .ok_or_else(|| ApiError::not_found("No app in the path"))
}

impl FromRequestParts<Arc<Ctx>> for SignedQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, ApiError> {
        let app_id = app_id(parts, ctx).await?;
        let (method, path, query) = (&parts.method, parts.uri.path(), parts.uri.query());
        let authed = auth::verify(auth::precheck(ctx, &app_id, method, path, query).await?, &[])?;
        Ok(Self { app: authed.app, query: authed.query })
    }
}

impl FromRequest<Arc<Ctx>> for Signed {
    type Rejection = ApiError;

    async fn from_request(request: Request, ctx: &Arc<Ctx>) -> Result<Self, ApiError> {
        let (mut parts, body) = request.into_parts();
        let app_id = app_id(&mut parts, ctx).await?;
        let (method, path, query) = (&parts.method, parts.uri.path(), parts.uri.query());
        let pre = auth::precheck(ctx, &app_id, method, path, query).await?;
        let limit = ctx.settings.http_body_limit;
        let too_large =
            || ApiError::too_large(format!("The request body is over the limit of {limit} bytes"));
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(too_large());
        }
        let read =
            tokio::time::timeout(ctx.settings.edge.body_timeout, axum::body::to_bytes(body, limit));
        let bytes = match read.await {
            Err(_) => {
                Metrics::count(&ctx.metrics.edge_timeouts, "kind", "body");
                return Err(ApiError::timeout("The request body did not arrive in time"));
            }
            Ok(Err(error)) if is_length_limit(&error) => return Err(too_large()),
            Ok(Err(error)) => {
                return Err(ApiError::bad_request(format!(
                    "The request body could not be read: {error}"
                )));
            }
            Ok(Ok(bytes)) => bytes,
        };
        ctx.metrics.http_bytes_received.inc_by(bytes.len() as u64);
        let authed = auth::verify(pre, &bytes)?;
        Ok(Self { app: authed.app, body: bytes })
    }
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}
