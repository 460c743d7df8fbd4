//! Idempotent publish: a trigger retried with the same idempotency key within the window gets
//! the first answer, and is not published again.
//!
//! The key is claimed with the rate-limiter driver (one token per window: taking it is atomic,
//! on one node for `memory`, for the whole cluster for `redis`), and the answer is kept in the
//! cache driver for the window. A retry that finds the key claimed waits a moment for the
//! answer, then is told to come back (503, `Retry-After: 1`). A publish that fails leaves a
//! mark that lets the next retry publish.

use std::time::Duration;

use serde_json::Value;

use super::ApiError;
use crate::{apps::App, config::IdempotencySettings, ctx::Ctx};

/// What a failed publish leaves under its key, so that a retry publishes.
const FAILED: &str = "\"$failed\"";
/// How often, and how many times, a retry looks for the first publish's answer.
const POLL: Duration = Duration::from_millis(50);
const POLLS: u32 = 6;

/// A key this request holds: its publish answers through [`Claimed::settle`].
#[derive(Debug)]
pub(crate) struct Claimed {
    cache_key: String,
    ttl: Duration,
}

/// What a claim found.
#[derive(Debug)]
pub(crate) enum Claim {
    /// This request publishes.
    First(Claimed),
    /// A request with the key was answered already: this answer.
    Answered(Value),
}

/// The request's key: the body's `idempotency_key`, else `header`; checked against the bounds.
pub(crate) fn key<'a>(
    settings: &IdempotencySettings,
    body: Option<&'a str>,
    header: Option<&'a str>,
) -> Result<Option<&'a str>, ApiError> {
    let Some(key) = body.or(header) else { return Ok(None) };
    if key.is_empty() {
        return Err(ApiError::bad_request("Idempotency key must not be empty"));
    }
    if key.chars().count() > settings.max_key_length {
        return Err(ApiError::bad_request(format!(
            "Idempotency key exceeds maximum length of {} characters",
            settings.max_key_length
        )));
    }
    Ok(Some(key))
}

/// Claim `key` for `app`'s publish.
pub(crate) async fn claim(
    ctx: &Ctx,
    settings: &IdempotencySettings,
    app: &App,
    key: &str,
) -> Result<Claim, ApiError> {
    let window = u64::try_from(settings.ttl.as_millis()).unwrap_or(u64::MAX);
    let cache_key = format!("app:{}:idempotency:{key}", app.id);
    let claimed = Claimed { cache_key: cache_key.clone(), ttl: settings.ttl };
    let unavailable = |error: &dyn std::fmt::Display| {
        ctx.metrics.idempotency.get_or_create(&vec![("outcome", "unavailable")]).inc();
        tracing::warn!(%error, "Idempotency could not be coordinated.");
        ApiError::unavailable("Idempotency coordination is temporarily unavailable").retry_after(1)
    };
    let limiter = &ctx.drivers.rate_limiter;
    let decision = limiter
        .check(&format!("idempotency:{}:{key}", app.id), 1, 1, window)
        .await
        .map_err(|e| unavailable(&e))?;
    if decision.allowed {
        ctx.metrics.idempotency.get_or_create(&vec![("outcome", "first")]).inc();
        return Ok(Claim::First(claimed));
    }
    for _ in 0..POLLS {
        match ctx.drivers.cache.get(&cache_key).await.map_err(|e| unavailable(&e))? {
            Some(answer) if answer == FAILED.as_bytes() => {
                ctx.metrics.idempotency.get_or_create(&vec![("outcome", "retried")]).inc();
                return Ok(Claim::First(claimed));
            }
            Some(answer) => {
                // The cache is another system: an answer that is not JSON is not replayed.
                if let Ok(answer) = serde_json::from_slice(&answer) {
                    ctx.metrics.idempotency.get_or_create(&vec![("outcome", "duplicate")]).inc();
                    return Ok(Claim::Answered(answer));
                }
            }
            None => {}
        }
        tokio::time::sleep(POLL).await;
    }
    ctx.metrics.idempotency.get_or_create(&vec![("outcome", "in_progress")]).inc();
    Err(ApiError::unavailable("Idempotent publish is still in progress").retry_after(1))
}

impl Claimed {
    /// Keep the publish's answer for the window (or, when it failed, the mark that lets a
    /// retry publish).
    pub(crate) async fn settle(self, ctx: &Ctx, answer: Option<&Value>) {
        let kept =
            answer.map_or_else(|| FAILED.as_bytes().to_vec(), |a| a.to_string().into_bytes());
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        if let Err(error) = ctx.drivers.cache.set(&self.cache_key, kept, ttl).await {
            tracing::warn!(%error, "An idempotent publish's answer could not be kept; a retry will wait for it.");
        }
    }
}
