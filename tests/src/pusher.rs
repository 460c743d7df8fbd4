//! A Pusher protocol client over a real WebSocket, and a signing HTTP API client.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use sockhost::protocol::signature;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::CloseFrame},
};

/// How long to wait for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(10);
/// How long to wait for something that should NOT happen, after a later event proved the
/// server has moved past it (a marker); short, since ordering already makes the point.
pub const QUIET: Duration = Duration::from_millis(200);

/// What the socket gave next.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A Pusher message.
    Event(Value),
    /// The server closed, with this code and reason.
    Closed(u16, String),
}

/// A WebSocket client speaking the Pusher protocol.
#[derive(Debug)]
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The socket id from `connection_established`.
    pub socket_id: String,
}

impl Client {
    /// Connect and wait for `connection_established`.
    ///
    /// # Panics
    /// If the connection is refused or the first message is something else.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("the WebSocket connects");
        let mut client = Self { ws, socket_id: String::new() };
        let established = client.expect("pusher:connection_established").await;
        let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
        client.socket_id = data["socket_id"].as_str().unwrap().to_string();
        client
    }

    /// Take over an upgraded WebSocket and wait for `connection_established`.
    ///
    /// # Panics
    /// If the first message is something else.
    pub async fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        let mut client = Self { ws, socket_id: String::new() };
        let established = client.expect("pusher:connection_established").await;
        let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
        client.socket_id = data["socket_id"].as_str().unwrap().to_string();
        client
    }

    /// Take over an upgraded WebSocket without reading anything.
    pub fn from_stream_raw(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Self { ws, socket_id: String::new() }
    }

    /// Connect without reading anything.
    ///
    /// # Panics
    /// If the WebSocket handshake fails.
    pub async fn connect_raw(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("the WebSocket connects");
        Self { ws, socket_id: String::new() }
    }

    /// Connect with Sockudo's protocol 2 (`url` asks for it) and wait for
    /// `sockudo:connection_established`.
    ///
    /// # Panics
    /// If the connection is refused or the first message is something else.
    pub async fn connect_v2(url: &str) -> Self {
        let mut client = Self::connect_raw(url).await;
        let established = client.expect("sockudo:connection_established").await;
        let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
        client.socket_id = data["socket_id"].as_str().unwrap().to_string();
        client
    }

    /// Subscribe with protocol 2's names to a public channel, or a private one signed with
    /// `app`, and return the acknowledgement.
    ///
    /// # Panics
    /// If something else comes first.
    pub async fn subscribe_v2(&mut self, app: &TestApp, channel: &str) -> Value {
        let mut data = json!({ "channel": channel });
        if channel.starts_with("private-") {
            data["auth"] = app.auth(&self.socket_id, channel, None).into();
        }
        self.send(json!({ "event": "sockudo:subscribe", "data": data })).await;
        self.expect("sockudo_internal:subscription_succeeded").await
    }

    /// Send a JSON message.
    ///
    /// # Panics
    /// If the socket is closed.
    pub async fn send(&mut self, message: Value) {
        self.ws.send(Message::text(message.to_string())).await.unwrap();
    }

    /// Send raw text.
    ///
    /// # Panics
    /// If the socket is closed.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Send a WebSocket frame as is.
    ///
    /// # Panics
    /// If the socket is closed.
    pub async fn send_frame(&mut self, frame: Message) {
        self.ws.send(frame).await.unwrap();
    }

    /// The next message or close, or `None` if nothing comes within `wait`.
    ///
    /// # Panics
    /// If a message is not JSON.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            match next {
                None => return Some(Received::Closed(1006, "connection dropped".into())),
                Some(Err(e)) => return Some(Received::Closed(1006, e.to_string())),
                Some(Ok(Message::Text(text))) => {
                    return Some(Received::Event(
                        serde_json::from_str(&text).expect("the server sends JSON"),
                    ));
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map_or((1005, String::new()), |CloseFrame { code, reason }| {
                            (code.into(), reason.to_string())
                        });
                    return Some(Received::Closed(code, reason));
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next text frame as sent, byte for byte (what a delta is computed against).
    ///
    /// # Panics
    /// If the connection closes or nothing comes in time.
    pub async fn next_text(&mut self) -> String {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.ws.next()).await;
            match next.expect("nothing arrived within the deadline") {
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
                Some(Ok(_)) => {}
                other => panic!("the connection ended: {other:?}"),
            }
        }
    }

    /// The next message or close.
    ///
    /// # Panics
    /// If nothing comes in time.
    pub async fn next(&mut self) -> Received {
        self.next_within(PATIENCE).await.expect("nothing arrived within the deadline")
    }

    /// The next message, which must be `event`.
    ///
    /// # Panics
    /// If something else comes first.
    pub async fn expect(&mut self, event: &str) -> Value {
        match self.next().await {
            Received::Event(message) if message["event"] == event => message,
            other => panic!("expected {event}, got {other:?}"),
        }
    }

    /// The next message, whatever it is.
    ///
    /// # Panics
    /// If the connection closes or nothing comes in time.
    pub async fn expect_any(&mut self) -> Value {
        match self.next().await {
            Received::Event(message) => message,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The next `pusher:error`'s code, which must come next.
    ///
    /// # Panics
    /// If something else comes first.
    pub async fn expect_error(&mut self, code: u16) -> String {
        let message = self.expect("pusher:error").await;
        let data = if let Some(text) = message["data"].as_str() {
            serde_json::from_str(text).unwrap()
        } else {
            message["data"].clone()
        };
        assert_eq!(data["code"], code, "{message}");
        data["message"].as_str().unwrap_or_default().to_string()
    }

    /// The close, which must come next (after any messages, skipped).
    ///
    /// # Panics
    /// If the connection stays open.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next().await {
                Received::Closed(code, reason) => return (code, reason),
                Received::Event(_) => {}
            }
        }
    }

    /// Nothing arrives within [`QUIET`].
    ///
    /// # Panics
    /// If something does.
    pub async fn expect_nothing(&mut self) {
        if let Some(got) = self.next_within(QUIET).await {
            panic!("expected nothing, got {got:?}");
        }
    }

    /// Subscribe and return the server's answer (`subscription_succeeded` or an error).
    pub async fn subscribe_raw(
        &mut self,
        channel: &str,
        auth: Option<String>,
        channel_data: Option<String>,
    ) -> Value {
        let mut data = json!({ "channel": channel });
        if let Some(auth) = auth {
            data["auth"] = auth.into();
        }
        if let Some(channel_data) = channel_data {
            data["channel_data"] = channel_data.into();
        }
        self.send(json!({ "event": "pusher:subscribe", "data": data })).await;
        match self.next().await {
            Received::Event(message) => message,
            other => panic!("no answer to the subscription: {other:?}"),
        }
    }

    /// Subscribe to a public channel, or a private one signed with `app`, and expect success.
    ///
    /// # Panics
    /// If the subscription fails.
    pub async fn subscribe(&mut self, app: &TestApp, channel: &str) -> Value {
        let auth =
            (channel.starts_with("private-")).then(|| app.auth(&self.socket_id, channel, None));
        let answer = self.subscribe_raw(channel, auth, None).await;
        assert_eq!(answer["event"], "pusher_internal:subscription_succeeded", "{answer}");
        answer
    }

    /// Send `pusher:subscribe` with `data` as given (a public channel with a `filter`, say);
    /// the answer: the acknowledgement, or the error.
    pub async fn subscribe_with(&mut self, data: Value) -> Value {
        self.send(json!({ "event": "pusher:subscribe", "data": data })).await;
        self.expect_any().await
    }

    /// Join a presence channel as `user_id` with `user_info`, expecting success; the members.
    ///
    /// # Panics
    /// If the subscription fails.
    pub async fn join(
        &mut self,
        app: &TestApp,
        channel: &str,
        user_id: &str,
        user_info: Value,
    ) -> Value {
        let channel_data = json!({ "user_id": user_id, "user_info": user_info }).to_string();
        let auth = app.auth(&self.socket_id, channel, Some(&channel_data));
        let answer = self.subscribe_raw(channel, Some(auth), Some(channel_data)).await;
        assert_eq!(answer["event"], "pusher_internal:subscription_succeeded", "{answer}");
        serde_json::from_str(answer["data"].as_str().unwrap()).unwrap()
    }

    /// Close the socket.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// An app's credentials, for signing.
#[derive(Debug, Clone)]
pub struct TestApp {
    /// The id.
    pub id: String,
    /// The key.
    pub key: String,
    /// The secret.
    pub secret: String,
}

impl TestApp {
    /// The apps of [`crate::server::APPS`].
    pub fn new(id: &str, key: &str, secret: &str) -> Self {
        Self { id: id.into(), key: key.into(), secret: secret.into() }
    }

    /// `app-1`.
    pub fn main() -> Self {
        Self::new("app-1", "key-1", "secret-1")
    }

    /// `limited`.
    pub fn limited() -> Self {
        Self::new("limited", "limited-key", "limited-secret")
    }

    /// `small` (small presence limits).
    pub fn small() -> Self {
        Self::new("small", "small-key", "small-secret")
    }

    /// `quiet` (client events off).
    pub fn quiet() -> Self {
        Self::new("quiet", "quiet-key", "quiet-secret")
    }

    /// The auth string for a channel subscription.
    pub fn auth(&self, socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
        let message = signature::channel_message(socket_id, channel, channel_data);
        format!("{}:{}", self.key, signature::sign(&self.secret, &message))
    }

    /// The auth string for a user signin.
    pub fn user_auth(&self, socket_id: &str, user_data: &str) -> String {
        format!(
            "{}:{}",
            self.key,
            signature::sign(&self.secret, &signature::user_message(socket_id, user_data))
        )
    }
}

/// A signing client for the HTTP API.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    app: TestApp,
    http: reqwest::Client,
}

/// An HTTP answer: status and JSON body.
pub type Answer = (u16, Value);

impl Api {
    /// A client for `app` at `base` (`http://127.0.0.1:port`).
    pub fn new(base: &str, app: &TestApp) -> Self {
        Self { base: base.into(), app: app.clone(), http: reqwest::Client::new() }
    }

    /// The signed query string for a request.
    pub fn signed_query(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        body: &[u8],
        timestamp: u64,
    ) -> String {
        let mut pairs: Vec<(String, String)> =
            params.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
        pairs.push(("auth_key".into(), self.app.key.clone()));
        pairs.push(("auth_timestamp".into(), timestamp.to_string()));
        pairs.push(("auth_version".into(), "1.0".into()));
        if !body.is_empty() {
            pairs.push(("body_md5".into(), signature::body_md5(body)));
        }
        let message = signature::api_message(
            method,
            path,
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        pairs.push(("auth_signature".into(), signature::sign(&self.app.secret, &message)));
        form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
    }

    /// Now, in seconds since the epoch.
    pub fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    /// Send `method path?query` with `body` exactly as given.
    ///
    /// # Panics
    /// If the server does not answer.
    pub async fn raw(&self, method: &str, path_and_query: &str, body: Vec<u8>) -> Answer {
        let url = format!("{}{path_and_query}", self.base);
        let request = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url).header("content-type", "application/json").body(body),
        };
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A signed GET of `path` (under `/apps/<id>`) with `params`.
    pub async fn get(&self, path: &str, params: &[(&str, &str)]) -> Answer {
        let path = format!("/apps/{}{path}", self.app.id);
        let query = self.signed_query("GET", &path, params, b"", Self::now());
        self.raw("GET", &format!("{path}?{query}"), Vec::new()).await
    }

    /// A signed POST of `body` to `path` (under `/apps/<id>`).
    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        let path = format!("/apps/{}{path}", self.app.id);
        let body = body.to_string().into_bytes();
        let query = self.signed_query("POST", &path, &[], &body, Self::now());
        self.raw("POST", &format!("{path}?{query}"), body).await
    }

    /// Trigger `event` with `data` on `channels`.
    pub async fn trigger(&self, channels: &[&str], event: &str, data: &str) -> Answer {
        self.post("/events", &json!({ "name": event, "data": data, "channels": channels })).await
    }
}
