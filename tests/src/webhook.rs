//! A webhook receiver: a real HTTP server on a free loopback port that records every request
//! and answers 200, or 500 when told to.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::pusher::PATIENCE;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hook {
    /// Its headers, names lowercased.
    pub headers: HashMap<String, String>,
    /// Its raw body.
    pub body: String,
    /// Its body, parsed.
    pub json: Value,
}

impl Hook {
    /// The names of the events it carries.
    pub fn names(&self) -> Vec<String> {
        self.json["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str().map(String::from))
            .collect()
    }
}

#[derive(Clone)]
struct Shared {
    tx: mpsc::UnboundedSender<Hook>,
    fail_next: Arc<AtomicUsize>,
    fail_always: Arc<AtomicBool>,
    /// While set, requests are recorded but not answered (until released).
    stalled: tokio::sync::watch::Sender<bool>,
}

/// The receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    /// Where to send webhooks.
    pub url: String,
    rx: mpsc::UnboundedReceiver<Hook>,
    fail_next: Arc<AtomicUsize>,
    fail_always: Arc<AtomicBool>,
    stalled: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let body = String::from_utf8_lossy(&body).into_owned();
    let hook = Hook {
        headers: headers
            .iter()
            .map(|(k, v)| {
                (k.as_str().to_ascii_lowercase(), v.to_str().unwrap_or_default().to_string())
            })
            .collect(),
        json: serde_json::from_str(&body).unwrap_or(Value::Null),
        body,
    };
    let _ = shared.tx.send(hook);
    let mut stalled = shared.stalled.subscribe();
    let _ = stalled.wait_for(|stalled| !stalled).await;
    let fail = shared.fail_always.load(Ordering::SeqCst)
        || shared
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    if fail { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK }
}

impl Receiver {
    /// Start a receiver.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stalled = tokio::sync::watch::Sender::new(false);
        let shared = Shared {
            tx,
            fail_next: Arc::default(),
            fail_always: Arc::default(),
            stalled: stalled.clone(),
        };
        let (fail_next, fail_always) = (shared.fail_next.clone(), shared.fail_always.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = Router::new().route("/hook", post(record)).with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, rx, fail_next, fail_always, stalled, task }
    }

    /// Answer 500 to the next `n` requests.
    pub fn fail_next(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Record requests but answer none until [`Receiver::release`]: a sender that dies now
    /// dies mid-delivery.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Answer the stalled requests and every later one.
    pub fn release(&self) {
        self.stalled.send_replace(false);
    }

    /// Answer 200 again after [`Receiver::fail_always`].
    pub fn succeed(&self) {
        self.fail_always.store(false, Ordering::SeqCst);
    }

    /// Answer 500 to every request.
    pub fn fail_always(&self) {
        self.fail_always.store(true, Ordering::SeqCst);
    }

    /// The next request.
    ///
    /// # Panics
    /// If none comes in time.
    pub async fn next(&mut self) -> Hook {
        tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .ok()
            .flatten()
            .expect("no webhook arrived in time")
    }

    /// The next request, which must carry exactly one event; that event.
    ///
    /// # Panics
    /// If none comes in time or it carries several.
    pub async fn next_event(&mut self) -> Value {
        let hook = self.next().await;
        let events = hook.json["events"].as_array().cloned().unwrap_or_default();
        assert_eq!(events.len(), 1, "expected one event: {}", hook.body);
        events[0].clone()
    }

    /// No request within `wait`.
    ///
    /// # Panics
    /// If one comes.
    pub async fn expect_none_within(&mut self, wait: std::time::Duration) {
        if let Ok(Some(hook)) = tokio::time::timeout(wait, self.rx.recv()).await {
            panic!("expected no webhook, got {}", hook.body);
        }
    }
}
