//! The console's sign-in: the admin token, typed once, exchanged for a cookie a browser sends
//! by itself (`HttpOnly`, `SameSite=Strict`). The cookie is the expiry and an HMAC of it keyed
//! by the token, so nothing is stored on the server, every node with the same token accepts
//! it, and changing the token signs every console out.

use std::time::Duration;

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

fn signature(token: &str, expires: u64) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("sockhost-console:{expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A `Set-Cookie` value signing a browser in for [`LIFETIME`].
pub(crate) fn issue(token: &str) -> String {
    let expires = now_ms() + u64::try_from(LIFETIME.as_millis()).unwrap_or(u64::MAX);
    let max_age = LIFETIME.as_secs();
    let value = format!("{expires}.{}", signature(token, expires));
    format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}")
}

/// A `Set-Cookie` value signing a browser out.
pub(crate) fn revoke() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// Whether the request carries a console cookie signed with `token` that has not expired.
pub(crate) fn signed_in(token: &str, headers: &HeaderMap) -> bool {
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
            let Some((expires, given)) = value.split_once('.') else { return false };
            let Ok(expires) = expires.parse::<u64>() else { return false };
            expires > now
                && bool::from(signature(token, expires).as_bytes().ct_eq(given.as_bytes()))
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
        assert!(signed_in(&token, &with_cookie(&format!("other=1; {pair}"))));
        assert!(!signed_in(&"u".repeat(32), &with_cookie(pair)), "another token");
        let expired = format!("{COOKIE}=1.{}", signature(&token, 1));
        assert!(!signed_in(&token, &with_cookie(&expired)));
        let forged = format!("{COOKIE}=99999999999999.{}", signature(&token, 1));
        assert!(!signed_in(&token, &with_cookie(&forged)));
        assert!(!signed_in(&token, &HeaderMap::new()));
        assert!(!signed_in("", &with_cookie(pair)));
    }
}
