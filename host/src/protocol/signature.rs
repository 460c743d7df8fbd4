//! The Pusher signatures: HMAC-SHA256 in lowercase hex, keyed by the app secret.
//!
//! - private channel: `<socket_id>:<channel>`; presence: `<socket_id>:<channel>:<channel_data>`;
//!   the client presents `<key>:<hex>`;
//! - user signin: `<socket_id>::user::<user_data>`;
//! - HTTP API: `<METHOD>\n<path>\n<query without auth_signature, keys lowercased and sorted>`;
//! - webhooks: the raw body.
//!
//! Comparisons are constant-time.

use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str) -> HmacSha256 {
    HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length")
}

/// The hex HMAC-SHA256 of `message` under `secret`.
pub fn sign(secret: &str, message: &str) -> String {
    let mut mac = mac(secret);
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature` (hex) is the HMAC-SHA256 of `message` under `secret`, compared in
/// constant time.
pub fn verify(secret: &str, message: &str, signature: &str) -> bool {
    let Ok(bytes) = hex::decode(signature) else { return false };
    let mut mac = mac(secret);
    mac.update(message.as_bytes());
    mac.verify_slice(&bytes).is_ok()
}

/// Check a channel or user auth string `<key>:<hex>` against `app_key`, `secret` and the signed
/// `message`.
pub fn verify_auth(app_key: &str, secret: &str, message: &str, auth: &str) -> bool {
    let Some((key, signature)) = auth.split_once(':') else { return false };
    // The key is public; only the signature needs a constant-time comparison.
    key == app_key && verify(secret, message, signature)
}

/// The string signed for a private or presence channel subscription.
pub fn channel_message(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The string signed for `pusher:signin`.
pub fn user_message(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// The string signed for an HTTP API request: `params` are the decoded query parameters.
pub fn api_message<'a>(
    method: &str,
    path: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .into_iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    pairs.sort();
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}\n{path}\n{}", method.to_ascii_uppercase(), query.join("&"))
}

/// The lowercase hex MD5 of a request body (`body_md5`).
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The published test vectors of the Pusher documentation.
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn private_channel_vector() {
        let message = channel_message("1234.1234", "private-foobar", None);
        let signature = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert_eq!(sign(SECRET, &message), signature);
        assert!(verify_auth(KEY, SECRET, &message, &format!("{KEY}:{signature}")));
        assert!(!verify_auth(KEY, SECRET, &message, &format!("other:{signature}")));
        assert!(!verify_auth(KEY, SECRET, &message, &format!("{KEY}:{}", "0".repeat(64))));
        assert!(!verify_auth(KEY, SECRET, &message, "no-colon"));
        assert!(!verify_auth(KEY, SECRET, &message, &format!("{KEY}:not-hex")));
    }

    #[test]
    fn presence_channel_vector() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#;
        let message = channel_message("1234.1234", "presence-foobar", Some(data));
        assert_eq!(
            sign(SECRET, &message),
            "afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c"
        );
    }

    #[test]
    fn user_signin_vector() {
        let message = user_message("1234.1234", r#"{"id":"12345"}"#);
        assert_eq!(
            sign(SECRET, &message),
            "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
        );
    }

    #[test]
    fn http_api_vector() {
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let md5 = body_md5(body.as_bytes());
        assert_eq!(md5, "ec365a775a4cd0599faeb73354201b6f");
        let message = api_message(
            "POST",
            "/apps/3/events",
            [
                ("auth_key", KEY),
                ("auth_timestamp", "1353088179"),
                ("auth_version", "1.0"),
                ("body_md5", md5.as_str()),
                ("auth_signature", "ignored"),
            ],
        );
        assert_eq!(
            message,
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179\
             &auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        assert_eq!(
            sign(SECRET, &message),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }
}
