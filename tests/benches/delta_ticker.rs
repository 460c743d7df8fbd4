//! Delta compression on a ticker, in one node's hub: 1,000 subscribers of one channel, 2 KB
//! quotes where one field changes, two conflation keys. For each mode (whole events, fossil
//! deltas, xdelta3 deltas) it publishes the same stream and reports bytes enqueued per delivery
//! and hub time per delivery (one thread, so time is CPU), each as a ratio against whole events
//! from the same run. The socket writes that follow are the same per byte in every mode, so
//! bytes on the wire follow the bytes enqueued.
//!
//! Run with: `cargo bench --workspace --bench delta_ticker`

use std::{sync::Arc, time::Instant};

use axum::extract::ws::Utf8Bytes;
use serde_json::{Value, json};
use sockhost::{
    delta::{Algorithm, StreamSettings},
    hub::{Closer, Conn, DeltaCounters, DeltaWish, Hub, Wants},
    protocol::frames,
};
use tokio::sync::mpsc;

const SUBSCRIBERS: usize = 1_000;
const EVENTS: u32 = 400;

fn quote(sym: &str, n: u32) -> String {
    let book: Vec<Value> =
        (0..40).map(|i| json!({ "level": i, "size": 1000 + i, "venue": "XNAS" })).collect();
    json!({ "sym": sym, "price": 1000 + n, "book": book }).to_string()
}

/// (bytes per delivery, nanoseconds of hub time per delivery).
fn run(algorithm: Option<Algorithm>) -> (f64, f64) {
    let hub = Hub::new(DeltaCounters::default());
    let settings = Arc::new(StreamSettings {
        conflation_key_path: Some(vec!["sym".into()]),
        ..StreamSettings::default()
    });
    let mut queues = Vec::new();
    for i in 0..SUBSCRIBERS {
        let (tx, rx) = mpsc::channel(EVENTS as usize + 8);
        let closer = Arc::new(Closer::new(EVENTS as usize + 8, 0, 90));
        let conn = Conn::new(format!("1.{i}").into(), tx, closer);
        let delta = algorithm.map(|a| DeltaWish { algorithm: Some(a), settings: settings.clone() });
        let wants = Wants { filter: None, delta };
        hub.subscribe("app", "ticker", &conn, None, wants, |_| Utf8Bytes::from("ack")).unwrap();
        queues.push((conn, rx));
    }
    let frames: Vec<Utf8Bytes> = (0..EVENTS)
        .map(|n| {
            let data = Value::String(quote(if n % 2 == 0 { "BTC" } else { "ETH" }, n));
            frames::channel_event("price", "ticker", &data, None).into()
        })
        .collect();
    let started = Instant::now();
    for frame in &frames {
        hub.broadcast("app", "ticker", frame, None, None, true);
    }
    let elapsed = started.elapsed();
    let mut bytes = 0usize;
    let mut deliveries = 0usize;
    for (_, rx) in &mut queues {
        rx.try_recv().expect("the acknowledgement");
        while let Ok(frame) = rx.try_recv() {
            bytes += frame.len();
            deliveries += 1;
        }
    }
    assert_eq!(deliveries, SUBSCRIBERS * EVENTS as usize);
    (bytes as f64 / deliveries as f64, elapsed.as_nanos() as f64 / deliveries as f64)
}

fn main() {
    let (whole_bytes, whole_ns) = run(None);
    println!(
        "ticker, {SUBSCRIBERS} subscribers, {EVENTS} events of ~{} bytes, 2 conflation keys",
        whole_bytes as u64
    );
    println!("whole events: {whole_bytes:.0} bytes and {whole_ns:.0} ns of hub time per delivery");
    for algorithm in [Algorithm::Fossil, Algorithm::Xdelta3] {
        let (bytes, ns) = run(Some(algorithm));
        println!(
            "{}: {bytes:.0} bytes ({:.3}x) and {ns:.0} ns ({:.2}x) per delivery",
            algorithm.name(),
            bytes / whole_bytes,
            ns / whole_ns,
        );
    }
}
