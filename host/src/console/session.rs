//! The console's sign-in: the admin token, typed once, exchanged for a cookie a browser sends
//! by itself (`HttpOnly`, `SameSite=Strict`). The cookie is its issue time and expiry and an
//! HMAC of both keyed by the token, so nothing per session is stored on the server, every node
//! with the same token accepts it, and changing the token signs every console out.
//!
//! Signing out ends sessions on the server too: the node keeps a session epoch, the time of
//! its last sign-out, and refuses every cookie issued before it. A copied or leaked cookie
//! stops working once its owner signs out. The epoch is per node (per process), held in
//! memory: a cookie is still accepted by the other nodes and after a restart until it expires.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use crate::cluster::now_ms;

/// The cookie's name.
pub(crate) const COOKIE: &str = "sockhost_console";
/// How long a sign-in lasts.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The header the console's own requests carry: a page on another site cannot set it without
/// a CORS preflight, which the admin listener never grants, so a cookie alone never changes
/// anything.
pub(crate) const CONSOLE_HEADER: &str = "x-sockhost-console";

/// The session epoch: cookies issued at or before this time (ms since the epoch) are refused.
/// One per process, which is one node; the cookie check is called where only the token is at
/// hand (the admin API's authorization), so the epoch lives beside it rather than in `Ctx`.
static SIGNED_OUT_AT: AtomicU64 = AtomicU64::new(0);

fn signature(token: &str, issued: u64, expires: u64) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("sockhost-console:{issued}:{expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The cookie's value for a session issued at `issued`.
fn value(token: &str, issued: u64) -> String {
    let expires = issued + u64::try_from(LIFETIME.as_millis()).unwrap_or(u64::MAX);
    format!("{issued}.{expires}.{}", signature(token, issued, expires))
}

/// A `Set-Cookie` value signing a browser in for [`LIFETIME`].
pub(crate) fn issue(token: &str) -> String {
    // After the last sign-out even within its millisecond, so a sign-in right after a
    // sign-out is not refused.
    let issued = now_ms().max(SIGNED_OUT_AT.load(Ordering::Acquire) + 1);
    let max_age = LIFETIME.as_secs();
    format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}",
        value(token, issued)
    )
}

/// A `Set-Cookie` value signing a browser out.
pub(crate) fn revoke() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// End every session issued so far on this node (a signed-in console signed out).
pub(crate) fn end_sessions() {
    SIGNED_OUT_AT.fetch_max(now_ms(), Ordering::AcqRel);
}

/// Whether the request carries a console cookie signed with `token` that has not expired
/// and was issued after this node's last sign-out.
pub(crate) fn signed_in(token: &str, headers: &HeaderMap) -> bool {
    signed_in_since(token, headers, SIGNED_OUT_AT.load(Ordering::Acquire))
}

/// [`signed_in`] with the session epoch `signed_out_at`.
fn signed_in_since(token: &str, headers: &HeaderMap, signed_out_at: u64) -> bool {
    if token.is_empty() {
        return false;
    }
    let now = now_ms();
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .any(|value| {
            let mut parts = value.splitn(3, '.');
            let (Some(issued), Some(expires), Some(given)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return false;
            };
            let (Ok(issued), Ok(expires)) = (issued.parse::<u64>(), expires.parse::<u64>()) else {
                return false;
            };
            expires > now
                && issued > signed_out_at
                && bool::from(signature(token, issued, expires).as_bytes().ct_eq(given.as_bytes()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, cookie.parse().expect("a header value"));
        headers
    }

    #[test]
    fn a_cookie_signed_with_the_token_signs_in_until_it_expires() {
        let token = "t".repeat(32);
        let issued = issue(&token);
        let pair = issued.split(';').next().expect("name=value");
        assert!(signed_in_since(&token, &with_cookie(&format!("other=1; {pair}")), 0));
        assert!(!signed_in_since(&"u".repeat(32), &with_cookie(pair), 0), "another token");
        let expired = format!("{COOKIE}=0.1.{}", signature(&token, 0, 1));
        assert!(!signed_in_since(&token, &with_cookie(&expired), 0));
        let forged = format!("{COOKIE}=1.99999999999999.{}", signature(&token, 1, 1));
        assert!(!signed_in_since(&token, &with_cookie(&forged), 0));
        assert!(!signed_in_since(&token, &HeaderMap::new(), 0));
        assert!(!signed_in_since("", &with_cookie(pair), 0));
    }

    #[test]
    fn a_cookie_issued_before_the_last_sign_out_is_refused() {
        let token = "t".repeat(32);
        let now = now_ms();
        let before = with_cookie(&format!("{COOKIE}={}", value(&token, now - 10)));
        let after = with_cookie(&format!("{COOKIE}={}", value(&token, now + 1)));
        assert!(signed_in_since(&token, &before, 0));
        assert!(!signed_in_since(&token, &before, now), "signed out since");
        assert!(signed_in_since(&token, &after, now), "signed in again since");
        // Moving the issue time without the token breaks the signature.
        let moved = value(&token, now - 10).replacen(&(now - 10).to_string(), &now.to_string(), 1);
        assert!(!signed_in_since(&token, &with_cookie(&format!("{COOKIE}={moved}")), now - 1));
    }
}
