//! Idempotent publish: a trigger retried with the same idempotency key within the window gets
//! the first answer, and is not published again.
//!
//! The key is claimed with the rate-limiter driver (one token per window: taking it is atomic,
//! on one node for `memory`, for the whole cluster for `redis`), and the answer is kept in the
//! cache driver for the window. A retry that finds the key claimed waits a moment for the
//! answer, then is told to come back (503, `Retry-After: 1`). A publish that fails leaves a
//! mark that lets one retry publish. A retry must carry the same event: another one under the
//! key is refused.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ApiError;
use crate::{apps::App, config::IdempotencySettings, ctx::Ctx};

/// What a failed publish left under its key before this form (a node of an older version in a
/// rolling deploy): read as a failure without a nonce.
const LEGACY_FAILED: &str = "\"$failed\"";
/// How often, and how many times, a retry looks for the first publish's answer.
const POLL: Duration = Duration::from_millis(50);
const POLLS: u32 = 6;

/// What a publish leaves under its key for the window: its answer, or that it failed, with
/// the fingerprint of the event it published (a retry must send the same event).
#[derive(Debug, Serialize, Deserialize)]
struct Kept {
    /// Marks this form apart from the bare answers an older version kept.
    #[serde(rename = "$idempotent")]
    form: u8,
    /// The event's fingerprint (see `events::fingerprint`).
    fp: String,
    /// The first publish's answer, given again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    answer: Option<Value>,
    /// The publish failed: the one retry that takes a token named by this nonce publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failed: Option<String>,
    /// The channels a failed publish reached before it failed: its retry skips them. (An
    /// older version leaves none, and its retries go to every channel.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    reached: Vec<String>,
}

/// What a claim reads under a key.
enum Found {
    Answer { fp: Option<String>, answer: Value },
    Failed { fp: Option<String>, nonce: String, reached: Vec<String> },
}

impl Found {
    /// What the cache holds, in this form or an older one (a bare answer or `"$failed"`);
    /// `None` for what no version writes (the cache is another system).
    fn read(bytes: &[u8]) -> Option<Self> {
        if bytes == LEGACY_FAILED.as_bytes() {
            return Some(Self::Failed { fp: None, nonce: String::new(), reached: Vec::new() });
        }
        let value: Value = serde_json::from_slice(bytes).ok()?;
        if value.get("$idempotent").is_none() {
            return Some(Self::Answer { fp: None, answer: value });
        }
        match serde_json::from_value::<Kept>(value).ok()? {
            Kept { fp, failed: Some(nonce), reached, .. } => {
                Some(Self::Failed { fp: Some(fp), nonce, reached })
            }
            Kept { fp, answer: Some(answer), .. } => Some(Self::Answer { fp: Some(fp), answer }),
            Kept { .. } => None,
        }
    }

    fn fingerprint(&self) -> Option<&str> {
        match self {
            Self::Answer { fp, .. } | Self::Failed { fp, .. } => fp.as_deref(),
        }
    }
}

/// A key this request holds: its publish answers through [`Claimed::settle`].
#[derive(Debug)]
pub(crate) struct Claimed {
    cache_key: String,
    ttl: Duration,
    fingerprint: String,
    reached: Reached,
}

/// The channels a keyed publish has reached, and those an earlier, failed attempt under its key
/// reached (which it skips): shared with the publish's own task, which may outlive its request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reached {
    /// The earlier attempts': skipped. Kept apart from this attempt's, so that an event naming
    /// a channel twice goes to it twice, as one without a key does.
    earlier: Arc<Vec<String>>,
    now: Arc<Mutex<Vec<String>>>,
}

impl Reached {
    fn after(earlier: Vec<String>) -> Self {
        Self { earlier: Arc::new(earlier), now: Arc::default() }
    }

    /// Whether an earlier attempt took the event to `channel`.
    pub(crate) fn earlier(&self, channel: &str) -> bool {
        self.earlier.iter().any(|c| c == channel)
    }

    /// This attempt took the event to `channel`.
    pub(crate) fn add(&self, channel: &str) {
        self.now.lock().expect("reached lock").push(channel.to_string());
    }

    /// Every channel reached, by the earlier attempts and this one.
    fn all(&self) -> Vec<String> {
        let now = std::mem::take(&mut *self.now.lock().expect("reached lock"));
        let mut all = (*self.earlier).clone();
        all.extend(now.into_iter().filter(|c| !self.earlier(c)));
        all
    }
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

/// Claim `key` for `app`'s publish of the event whose fingerprint is `fingerprint`.
///
/// The key's token (one per window) makes the first request the publisher. A retry waits a
/// moment for its answer; one for another event under the key is refused (400, as Sockudo
/// answers). A failed publish leaves a nonce, and of the retries that find it, only the one
/// that takes the nonce's own token publishes: two retries at once do not both go out.
pub(crate) async fn claim(
    ctx: &Ctx,
    settings: &IdempotencySettings,
    app: &App,
    key: &str,
    fingerprint: String,
) -> Result<Claim, ApiError> {
    let window = u64::try_from(settings.ttl.as_millis()).unwrap_or(u64::MAX);
    let cache_key = format!("app:{}:idempotency:{key}", app.id);
    let token = format!("idempotency:{}:{key}", app.id);
    let outcome = |name: &'static str| {
        ctx.metrics.idempotency.get_or_create(&vec![("outcome", name)]).inc();
    };
    let unavailable = |error: &dyn std::fmt::Display| {
        outcome("unavailable");
        tracing::warn!(%error, "Idempotency could not be coordinated.");
        ApiError::unavailable("Idempotency coordination is temporarily unavailable").retry_after(1)
    };
    let take = async |name: &str| {
        let decision = ctx.drivers.rate_limiter.check(name, 1, 1, window).await;
        decision.map(|d| d.allowed).map_err(|e| unavailable(&e))
    };
    let mismatch = || {
        outcome("mismatch");
        ApiError::bad_request("idempotency key was already used with a different payload")
    };
    let mut claimed = Claimed {
        cache_key: cache_key.clone(),
        ttl: settings.ttl,
        fingerprint,
        reached: Reached::default(),
    };
    let first = take(&token).await?;
    for poll in 0..=POLLS {
        let kept = ctx.drivers.cache.get(&cache_key).await.map_err(|e| unavailable(&e))?;
        // An answer outlives its token by the publish's own time: it is still the answer.
        let found = kept.as_deref().and_then(Found::read);
        if found.as_ref().and_then(Found::fingerprint).is_some_and(|fp| fp != claimed.fingerprint) {
            return Err(mismatch());
        }
        match found {
            Some(Found::Answer { answer, .. }) => {
                outcome("duplicate");
                return Ok(Claim::Answered(answer));
            }
            Some(Found::Failed { nonce, reached, .. }) => {
                // Of the retries that find the failure, the one that takes its nonce's token.
                let publishes = first || take(&format!("{token}:{nonce}")).await?;
                if publishes {
                    outcome("retried");
                    // Only to the channels the failed attempt did not reach. The fingerprint
                    // matched, so these are among the event's own.
                    claimed.reached = Reached::after(reached);
                    return Ok(Claim::First(claimed));
                }
            }
            None if first => {
                outcome("first");
                return Ok(Claim::First(claimed));
            }
            None => {}
        }
        if poll < POLLS {
            tokio::time::sleep(POLL).await;
        }
    }
    outcome("in_progress");
    Err(ApiError::unavailable("Idempotent publish is still in progress").retry_after(1))
}

impl Claimed {
    /// The channels its publish has reached; the publish adds to them.
    pub(crate) fn reached(&self) -> &Reached {
        &self.reached
    }

    /// Keep the publish's answer for the window (or, when it failed, the nonce that lets one
    /// retry publish, and the channels it reached).
    pub(crate) async fn settle(self, ctx: &Ctx, answer: Option<&Value>) {
        let (answer, failed, reached) = match answer {
            Some(answer) => (Some(answer.clone()), None, Vec::new()),
            None => (None, Some(uuid::Uuid::new_v4().simple().to_string()), self.reached.all()),
        };
        let kept = Kept { form: 1, fp: self.fingerprint, answer, failed, reached };
        let kept = serde_json::to_vec(&kept).unwrap_or_default();
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        if let Err(error) = ctx.drivers.cache.set(&self.cache_key, kept, ttl).await {
            tracing::warn!(%error, "An idempotent publish's answer could not be kept; a retry will wait for it.");
        }
    }
}
