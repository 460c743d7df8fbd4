//! Entry points for the in-process benchmarks in `tests/benches`, so that they measure the
//! crate's insides (the hub) without the crate exporting them.

use std::{sync::Arc, time::Instant};

use axum::extract::ws::Utf8Bytes;
use serde_json::{Value, json};

use crate::{
    delta::{Algorithm, StreamSettings},
    hub::{Closer, Conn, DeltaCounters, DeltaWish, Hub, SentCounters, Wants},
    protocol::{Broadcast, frames},
};

/// A ~2 KB quote where only `sym` and the price change.
fn quote(sym: &str, n: u32) -> String {
    let book: Vec<Value> =
        (0..40).map(|i| json!({ "level": i, "size": 1000 + i, "venue": "XNAS" })).collect();
    json!({ "sym": sym, "price": 1000 + n, "book": book }).to_string()
}

/// A ticker through one hub: `subscribers` on one channel, `events` quotes for two symbols
/// (the conflation key) in turn, as deltas in `algorithm` (`fossil`, `xdelta3`) or whole
/// (`None`). Answers (bytes enqueued per delivery, nanoseconds of hub time per delivery).
///
/// # Panics
/// If an algorithm is unknown or a delivery is missing.
pub fn delta_ticker(subscribers: usize, events: u32, algorithm: Option<&str>) -> (f64, f64) {
    let algorithm = algorithm.map(|name| Algorithm::parse(name).expect("fossil or xdelta3"));
    let hub = Hub::new(DeltaCounters::default(), SentCounters::default());
    let settings = Arc::new(StreamSettings {
        conflation_key_path: Some(vec!["sym".into()]),
        ..StreamSettings::default()
    });
    let mut queues = Vec::new();
    for i in 0..subscribers {
        let (closer, rx) = Closer::open(events as usize + 8, 0, 90);
        let conn = Conn::new(format!("1.{i}").into(), closer);
        let delta = algorithm.map(|a| DeltaWish { algorithm: Some(a), settings: settings.clone() });
        let wants = Wants { filter: None, delta };
        hub.subscribe("app", "ticker", &conn, None, wants, |_| vec![Utf8Bytes::from("ack")])
            .expect("no member limit");
        queues.push(rx);
    }
    let frames: Vec<Utf8Bytes> = (0..events)
        .map(|n| {
            let data = Value::String(quote(if n % 2 == 0 { "BTC" } else { "ETH" }, n));
            frames::channel_event("price", "ticker", &data, None).into()
        })
        .collect();
    let started = Instant::now();
    for frame in &frames {
        hub.broadcast(&Broadcast::to("app", "ticker").compressible(true), frame);
    }
    let elapsed = started.elapsed();
    let (mut bytes, mut deliveries) = (0usize, 0usize);
    for rx in &mut queues {
        rx.try_recv().expect("the acknowledgement");
        while let Some(frame) = rx.try_recv() {
            bytes += frame.len();
            deliveries += 1;
        }
    }
    assert_eq!(deliveries, subscribers * events as usize, "every delivery enqueued");
    (bytes as f64 / deliveries as f64, elapsed.as_nanos() as f64 / deliveries as f64)
}
