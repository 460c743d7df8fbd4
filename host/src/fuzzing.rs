//! Entry points for fuzzing the parsers that read bytes the host does not control: client
//! messages, bus envelopes from other nodes, HTTP API query strings, and the config file.
//!
//! Each function takes arbitrary bytes and must not panic on any of them; it panics only when an
//! invariant breaks (a decoded envelope that does not read back the same, a signature that does
//! not verify, two config paths that disagree), with a message that says which. The cargo-fuzz
//! targets in `fuzz/` and the corpus replay in `tests/tests/fuzz_corpus.rs` call nothing else, so
//! they keep working when the modules behind them stop being public.
//!
//! Bytes that are not UTF-8 are valid input. Where the real server only ever hands text to a
//! parser (a WebSocket text frame, a config file read as a string), such input is skipped,
//! because the server itself refuses it before the parser sees it.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use serde_json::{Map, Value};

use crate::{
    cluster::envelope::{Body, Control, Envelope},
    config::{self, Config, ConfigError, Settings, Sources},
    protocol::{
        channel::{self, ChannelKind},
        frames,
        inbound::{self, ClientMessage},
        recovery, signature,
    },
};

/// The app key and secret of the Pusher documentation's test vectors.
const KEY: &str = "278d425bdf160c739803";
const SECRET: &str = "7ad3773142a6692b25b8";
/// A socket id of the shape the server hands out.
const SOCKET_ID: &str = "1234.1234";
/// The server-wide default of `channel_limits.max_name_length`.
const MAX_CHANNEL_NAME: usize = 200;

/// One text frame from a client, through [`inbound::parse`].
///
/// Invariants: a parsed message reads back the same from its canonical JSON; a client event
/// reads back the same from the frame the server forwards to subscribers (which is itself a
/// client message); a signature made for a subscription or sign-in verifies, a flipped one does
/// not, and the client's own auth string is checked without panicking.
pub fn inbound(data: &[u8]) {
    // A WebSocket text frame is valid UTF-8 by the time the session parses it.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let message = match inbound::parse(text) {
        Ok(message) => message,
        Err(e) => {
            // The error goes back to the client as text.
            let _ = e.to_string();
            return;
        }
    };
    match &message {
        ClientMessage::Ping | ClientMessage::Pong => {}
        ClientMessage::Subscribe { channel, auth, channel_data, filter, delta: _, rewind } => {
            if let Some(rewind) = rewind {
                let _ = crate::protocol::recovery::Rewind::parse(rewind);
            }
            check_channel_name(channel);
            // A filter compiles or is refused with a reason; it never panics.
            if let Some(filter) = filter
                && let Err(error) = crate::protocol::filter::Filter::compile(filter)
            {
                let _ = error.to_string();
            }
            // Only presence channels sign their channel data, as the session does.
            let signed_data = match ChannelKind::of(channel) {
                ChannelKind::Presence => channel_data.as_deref(),
                _ => None,
            };
            let signed = signature::channel_message(SOCKET_ID, channel, signed_data);
            check_auth(&signed, auth.as_deref());
        }
        ClientMessage::Unsubscribe { channel } | ClientMessage::DeltaSyncError { channel } => {
            check_channel_name(channel);
        }
        ClientMessage::EnableDeltaCompression { algorithms } => {
            for name in algorithms {
                let _ = crate::delta::Algorithm::parse(name);
            }
        }
        ClientMessage::Signin { auth, user_data } => {
            check_auth(&signature::user_message(SOCKET_ID, user_data), Some(auth));
        }
        ClientMessage::Resume { data } => match recovery::parse_resume(data) {
            // What is kept of a resume is bounded: some channels, none too many, short ids.
            Ok(wanted) => {
                assert!(!wanted.is_empty() && wanted.len() <= recovery::MAX_RESUME_CHANNELS);
                for (_, wanted) in &wanted {
                    if let recovery::Wanted::Position(position) = wanted {
                        assert!(position.stream_id.len() <= recovery::MAX_ID_LENGTH);
                    }
                }
            }
            Err(error) => {
                let _ = error.to_string();
            }
        },
        ClientMessage::ClientEvent { event, channel, data } => {
            check_channel_name(channel);
            // Subscribers get the event in the server's frame; on presence channels with the
            // sender's user id.
            for user_id in [None, Some("user-1")] {
                let frame = frames::channel_event(event, channel, data, user_id);
                let again = inbound::parse(&frame).unwrap_or_else(|e| {
                    panic!("the forwarded frame {frame} of {message:?} does not parse: {e}")
                });
                assert!(
                    message == again,
                    "the forwarded frame {frame} reads as {again:?}, not {message:?}"
                );
            }
        }
    }
    let canonical = canonical_text(&message);
    let again = inbound::parse(&canonical)
        .unwrap_or_else(|e| panic!("{canonical} (from {message:?}) does not parse: {e}"));
    assert!(message == again, "{canonical} reads as {again:?}, not {message:?}");
}

/// One message from the bus, through [`Envelope::decode`].
///
/// Invariants: an envelope that decodes re-encodes to bytes that decode to the same envelope;
/// a broadcast re-encodes to exactly the bytes it came from (its frame is forwarded as is).
/// The bytes are tried twice: as a whole envelope, and as the JSON body of a control envelope,
/// so that mutations reach the JSON without first having to get the binary header right.
pub fn envelope(data: &[u8]) {
    check_envelope(data);
    let header = Envelope { node: 1, seq: 1, body: Body::Control(Control::Goodbye) }.encode();
    // The header is version, kind, node and sequence: 1 + 1 + 8 + 8 bytes.
    let mut control = header[..18].to_vec();
    control.extend_from_slice(data);
    check_envelope(&control);
}

/// An HTTP API request target, `<path>?<query>` (without `?`, all of it is the query of
/// `/apps/app-id/events`), its query decoded with [`form_urlencoded::parse`] as the API does.
///
/// Invariants, for GET and POST: the signed message ([`signature::api_message`]) starts with
/// the method and path and does not depend on the order of the parameters nor on an
/// `auth_signature` among them; its signature verifies and a flipped one does not; a client that
/// signs these parameters and sends them URL-encoded with the signature is accepted; a GET
/// signature does not verify the POST message; the request's own `auth_signature` is checked
/// without panicking, and passes only if it is the right one.
pub fn api_query(data: &[u8]) {
    let (path, query) = match data.iter().position(|&b| b == b'?') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"/apps/app-id/events"[..], data),
    };
    // axum hands the handler a `&str` path; the query stays bytes until form_urlencoded.
    let Ok(path) = std::str::from_utf8(path) else { return };
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query).into_owned().collect();
    let borrowed = || pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    // The API reads parameters through a map: the last of a repeated name wins.
    let given = borrowed().filter(|(k, _)| *k == "auth_signature").map(|(_, v)| v).next_back();

    let check = |method: &str| {
        let message = signature::api_message(method, path, borrowed());
        assert!(
            message.starts_with(&format!("{method}\n{path}\n")),
            "{message:?} does not start with the method and path"
        );
        let reversed = signature::api_message(method, path, borrowed().rev());
        assert_eq!(message, reversed, "the signed message depends on the parameters' order");
        let with_signature =
            signature::api_message(method, path, borrowed().chain([("auth_signature", "00")]));
        assert_eq!(message, with_signature, "auth_signature is part of the signed message");

        let signed = signature::sign(SECRET, &message);
        assert!(
            signed.len() == 64
                && signed.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{signed:?} is not 64 lowercase hex digits"
        );
        assert!(signature::verify(SECRET, &message, &signed), "a fresh signature is refused");
        assert!(!signature::verify(SECRET, &message, &flip(&signed)), "a flipped one is accepted");

        // What a client library does: sign its parameters, then send them URL-encoded.
        let client_query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(borrowed().filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature")))
            .append_pair("auth_signature", &signed)
            .finish();
        let received: Vec<(String, String)> =
            form_urlencoded::parse(client_query.as_bytes()).into_owned().collect();
        let received_message = signature::api_message(
            method,
            path,
            received.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        assert!(
            signature::verify(SECRET, &received_message, &signed),
            "a client's signed request {client_query:?} is refused: it signed {message:?}, the \
             server checked {received_message:?}"
        );

        if let Some(given) = given
            && signature::verify(SECRET, &message, given)
        {
            assert!(given.eq_ignore_ascii_case(&signed), "{given:?} passes for {signed:?}");
        }
        (message, signed)
    };
    let (_, get) = check("GET");
    let (post_message, _) = check("POST");
    assert!(!signature::verify(SECRET, &post_message, &get), "a GET signature passes for POST");
}

/// A config file's text, as TOML and as JSON (Sockudo's layout), to validated [`Settings`].
///
/// Both go through [`settings_from_text`] and through the real loader ([`config::settings`],
/// which reads a file, so the text is written to a temporary one). Invariants: the two agree on
/// whether the text is valid and, when it is, on the settings; accepted settings keep the rules
/// the rest of the host trusts (apps with unique ids and keys, driver configuration text that
/// parses as TOML again, heartbeats well inside the node timeout).
pub fn config(data: &[u8]) {
    // The loader reads the file into a `String`: anything else is refused before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    for format in [ConfigFormat::Toml, ConfigFormat::Json] {
        let direct = settings_from_text(text, format);
        if let Ok(settings) = &direct {
            check_settings(settings);
        }
        // Text that does not parse is refused by the same parser in both paths; the file round
        // trip is kept for text that gets further.
        if parse_config_tree(text, format).is_err() {
            continue;
        }
        let Some(loaded) = settings_from_file(text, format) else { continue };
        match (&direct, &loaded) {
            (Ok(direct), Ok(loaded)) => assert_eq!(
                format!("{direct:?}"),
                format!("{loaded:?}"),
                "the loader and settings_from_text read {format:?} text differently"
            ),
            (Err(_), Err(errors)) => assert!(!errors.is_empty(), "refused without a reason"),
            (Ok(_), Err(errors)) => {
                panic!("the loader refuses {format:?} text settings_from_text accepts: {errors:?}")
            }
            (Err(errors), Ok(_)) => {
                panic!("the loader accepts {format:?} text settings_from_text refuses: {errors:?}")
            }
        }
    }
}

/// The formats the config loader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFormat {
    /// `sockhost.toml`.
    Toml,
    /// `config/config.json`, Sockudo's layout.
    Json,
}

/// Config text to validated [`Settings`] without the file system or the environment: the steps
/// [`config::load`] and [`config::settings`] take after reading a file.
///
/// Parse the text into a tree whose top level must be a table; add the default app (the
/// `SOCKUDO_DEFAULT_APP_*` defaults) when the text lists none; deserialize a [`Config`];
/// refuse driver-section keys that are not tables; [`Settings::from_config`]. The loader goes
/// on after a bad value to list every problem; this stops at the first, and accepts the same
/// texts (which [`config()`] checks).
pub fn settings_from_text(text: &str, format: ConfigFormat) -> Result<Settings, Vec<ConfigError>> {
    let mut tree = parse_config_tree(text, format).map_err(|e| vec![e])?;
    let has_apps = tree
        .pointer("/app_manager/array/apps")
        .and_then(Value::as_array)
        .is_some_and(|apps| !apps.is_empty());
    if !has_apps {
        let app = serde_json::json!({
            "id": "app-id",
            "key": "app-key",
            "secret": "app-secret",
            "enabled": true,
            "enable_client_messages": false,
            "max_connections": 0,
            "max_backend_events_per_second": 0,
            "max_client_events_per_second": 10,
            "max_read_requests_per_second": 0,
            "enable_user_authentication": false,
        });
        set_path(&mut tree, &["app_manager", "array", "apps"], Value::Array(vec![app]));
    }
    let config: Config = serde_json::from_value(tree)
        .map_err(|e| vec![ConfigError { place: "config".into(), problem: e.to_string() }])?;
    let sections = [
        ("adapter", &config.adapter),
        ("cache", &config.cache),
        ("queue", &config.queue),
        ("rate_limiter", &config.rate_limiter),
    ];
    let errors: Vec<ConfigError> = sections
        .into_iter()
        .flat_map(|(name, section)| {
            section.tables.iter().filter(|(_, value)| !value.is_object()).map(move |(key, _)| {
                ConfigError { place: format!("{name}.{key}"), problem: "not a table".into() }
            })
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    Settings::from_config(config)
}

fn parse_config_tree(text: &str, format: ConfigFormat) -> Result<Value, ConfigError> {
    let err = |problem: String| ConfigError { place: "config".into(), problem };
    let tree = match format {
        ConfigFormat::Json => {
            serde_json::from_str::<Value>(text).map_err(|e| err(e.to_string()))?
        }
        ConfigFormat::Toml => {
            let table: toml::Table = toml::from_str(text).map_err(|e| err(e.to_string()))?;
            serde_json::to_value(table).map_err(|e| err(e.to_string()))?
        }
    };
    if tree.is_object() { Ok(tree) } else { Err(err("the top level is not a table".into())) }
}

/// Set `path` in `tree`, replacing whatever is not a table on the way, as the loader sets the
/// default app.
fn set_path(tree: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut node = tree;
    for part in parents {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { unreachable!("just made a table") };
        node = map.entry(*part).or_insert_with(|| Value::Object(Map::new()));
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    if let Value::Object(map) = node {
        map.insert((*last).to_string(), value);
    }
}

/// The real loader over `text` written to a temporary file; `None` if the file cannot be
/// written (not the input's fault).
fn settings_from_file(
    text: &str,
    format: ConfigFormat,
) -> Option<Result<Settings, Vec<ConfigError>>> {
    // Unique per process and call: fuzzers run several processes, tests several threads.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let extension = match format {
        ConfigFormat::Toml => "toml",
        ConfigFormat::Json => "json",
    };
    let path = std::env::temp_dir().join(format!(
        "sockhost-fuzz-config-{}-{}.{extension}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).ok()?;
    let _remove = RemoveOnDrop(path.clone());
    Some(config::settings(&Sources { file: Some(path), ..Sources::default() }))
}

/// Removes the temporary config file even when an invariant panics.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn check_settings(settings: &Settings) {
    assert!(!settings.apps.is_empty(), "no app (the default app is added when none is listed)");
    let mut ids = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for app in &settings.apps {
        for (field, value) in [("id", &app.id), ("key", &app.key), ("secret", &app.secret)] {
            assert!(!value.trim().is_empty(), "app {:?} has a blank {field}", app.id);
        }
        assert!(ids.insert(&app.id), "duplicate app id {:?}", app.id);
        assert!(keys.insert(&app.key), "duplicate app key {:?}", app.key);
        let limits = &app.limits;
        for (name, value) in [
            ("max_channel_name_length", limits.max_channel_name_length),
            ("max_event_channels_at_once", limits.max_event_channels_at_once),
            ("max_event_name_length", limits.max_event_name_length),
            ("max_event_payload_bytes", limits.max_event_payload_bytes),
            ("max_event_batch_size", limits.max_event_batch_size),
            ("max_presence_members", limits.max_presence_members),
        ] {
            assert!(value >= 1, "app {:?} has {name} 0", app.id);
        }
    }
    let drivers = &settings.drivers;
    for choice in [&drivers.transport, &drivers.cache, &drivers.queue, &drivers.rate_limiter] {
        assert!(!choice.name.trim().is_empty(), "a blank driver name");
        // The plugin parses this text as TOML; it must be able to.
        if !choice.config.is_empty()
            && let Err(e) = toml::from_str::<toml::Table>(&choice.config)
        {
            panic!("driver {:?} gets TOML that does not parse: {e}\n{}", choice.name, choice.config)
        }
    }
    let cluster = &settings.cluster;
    assert!(!cluster.heartbeat_interval.is_zero(), "a zero heartbeat interval");
    if cluster.node_timeout != std::time::Duration::MAX {
        assert!(
            cluster.heartbeat_interval * 3 <= cluster.node_timeout,
            "heartbeat {:?} is not within a third of the node timeout {:?}",
            cluster.heartbeat_interval,
            cluster.node_timeout
        );
    }
}

fn check_envelope(bytes: &[u8]) {
    let envelope = match Envelope::decode(bytes) {
        Ok(envelope) => envelope,
        Err(e) => {
            // Logged by the bus reader.
            let _ = e.to_string();
            return;
        }
    };
    let encoded = envelope.encode();
    if let Body::Broadcast { .. } = envelope.body {
        assert!(encoded == bytes, "a broadcast re-encodes to other bytes: {envelope:?}");
    }
    let again = Envelope::decode(&encoded)
        .unwrap_or_else(|e| panic!("{envelope:?} re-encodes to bytes that do not decode: {e}"));
    let same =
        envelope.node == again.node && envelope.seq == again.seq && envelope.body == again.body;
    assert!(same, "{envelope:?} reads back as {again:?}");
}

fn check_channel_name(name: &str) {
    let _ = ChannelKind::of(name).needs_auth();
    let _ = channel::is_cache(name);
    match channel::validate(name, MAX_CHANNEL_NAME) {
        Ok(()) => assert!(
            !name.is_empty() && name.len() <= MAX_CHANNEL_NAME && name.is_ascii(),
            "{name:?} passes validation"
        ),
        // Sent back to the client.
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// A signature made for `message` passes, a flipped one and another key's do not; `given`, the
/// client's `<key>:<hex>`, is checked and passes only if it is the right one.
fn check_auth(message: &str, given: Option<&str>) {
    let signed = signature::sign(SECRET, message);
    let auth = format!("{KEY}:{signed}");
    assert!(signature::verify_auth(KEY, SECRET, message, &auth), "a fresh auth is refused");
    let flipped = format!("{KEY}:{}", flip(&signed));
    assert!(!signature::verify_auth(KEY, SECRET, message, &flipped), "a flipped auth passes");
    let other = format!("other-key:{signed}");
    assert!(!signature::verify_auth(KEY, SECRET, message, &other), "another key's auth passes");
    if let Some(given) = given
        && signature::verify_auth(KEY, SECRET, message, given)
    {
        assert!(given.eq_ignore_ascii_case(&auth), "{given:?} passes for {auth:?}");
    }
}

/// `signature` with its last hex digit changed.
fn flip(signature: &str) -> String {
    let mut flipped = signature.to_string();
    let last = flipped.pop();
    flipped.push(if last == Some('0') { '1' } else { '0' });
    flipped
}

/// The JSON a client would send for `message`.
fn canonical_text(message: &ClientMessage) -> String {
    let pusher = |event: &str, data: Value| serde_json::json!({ "event": event, "data": data });
    let text = |s: &Option<String>| s.as_ref().map(|s| Value::String(s.clone()));
    let value = match message {
        ClientMessage::Ping => pusher("pusher:ping", serde_json::json!({})),
        ClientMessage::Pong => pusher("pusher:pong", serde_json::json!({})),
        ClientMessage::Subscribe { channel, auth, channel_data, filter, delta, rewind } => {
            let mut data = Map::new();
            if let Some(rewind) = rewind {
                data.insert("rewind".into(), rewind.clone());
            }
            if let Some(filter) = filter {
                data.insert("filter".into(), filter.clone());
            }
            match delta {
                Some(crate::protocol::inbound::DeltaRequest::Off) => {
                    data.insert("delta".into(), Value::Bool(false));
                }
                Some(crate::protocol::inbound::DeltaRequest::On(algorithm)) => {
                    let request = serde_json::json!({ "enabled": true, "algorithm": algorithm });
                    data.insert("delta".into(), request);
                }
                None => {}
            }
            data.insert("channel".into(), Value::String(channel.clone()));
            if let Some(auth) = text(auth) {
                data.insert("auth".into(), auth);
            }
            if let Some(channel_data) = text(channel_data) {
                data.insert("channel_data".into(), channel_data);
            }
            pusher("pusher:subscribe", Value::Object(data))
        }
        ClientMessage::Unsubscribe { channel } => {
            pusher("pusher:unsubscribe", serde_json::json!({ "channel": channel }))
        }
        ClientMessage::Signin { auth, user_data } => {
            pusher("pusher:signin", serde_json::json!({ "auth": auth, "user_data": user_data }))
        }
        // A string is sent as a JSON string of itself: the server reads a string's JSON.
        ClientMessage::Resume { data: Value::String(text) } => {
            pusher("pusher:resume", Value::String(Value::String(text.clone()).to_string()))
        }
        ClientMessage::Resume { data } => pusher("pusher:resume", data.clone()),
        ClientMessage::ClientEvent { event, channel, data } => {
            serde_json::json!({ "event": event, "channel": channel, "data": data })
        }
        ClientMessage::EnableDeltaCompression { algorithms } => pusher(
            "pusher:enable_delta_compression",
            serde_json::json!({ "algorithms": algorithms }),
        ),
        ClientMessage::DeltaSyncError { channel } => {
            pusher("pusher:delta_sync_error", serde_json::json!({ "channel": channel }))
        }
    };
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_the_server_accepts() {
        inbound(
            br#"{"event":"pusher:subscribe","data":{"channel":"presence-x","auth":"k:sig","channel_data":"{\"user_id\":1}"}}"#,
        );
        inbound(br#"{"event":"client-x","channel":"private-a","data":{"n":[1,2.5,"x"]}}"#);
        inbound(b"\xff not text");
        api_query(b"/apps/3/events?auth_key=k&auth_timestamp=1&auth_version=1.0&auth_signature=00");
        api_query(b"%zz&=&a=%FF");
        let broadcast = Envelope {
            node: 7,
            seq: 42,
            body: Body::Broadcast {
                app: "app".into(),
                channel: "c".into(),
                except: None,
                tags: Some([("k".to_string(), "v".to_string())].into()),
                compressible: true,
                position: None,
                frame: b"{}".to_vec(),
            },
        };
        envelope(&broadcast.encode());
        envelope(br#"{"type":"request","id":1,"query":{"x":1e-300}}"#);
        config(
            b"port = 7000\n[[app_manager.array.apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n",
        );
        config(br#"{"port": 7000, "adapter": {"driver": "local", "x": 1}}"#);
        config(b"app_manager = 5");
    }
}
