//! The redis transport loaded as a `.so` against the same code linked into this binary:
//! messages per second from one instance to another through a real `redis-server`.
//!
//! Run with: `cargo build --release --workspace && cargo bench --workspace --bench redis_so_vs_linked`
//!
//! Both paths call the same constructor (the plugin's root module: found by `dlopen` in one
//! case, linked in the other), so the difference is the boundary alone.

use std::{sync::atomic::Ordering, time::Instant};

use sockhost_plugin_api::{
    ErrorCode, TransportBox,
    abi::{RStr, RVec},
    conformance::{Target, cdylib, run},
    load::Constructor,
};
use sockhost_tests::{backends::RedisServer, counting::counting_host};

const MESSAGES: u64 = 300_000;
const ROUNDS: usize = 7;

/// Messages per second from a publishing instance to a subscribed one, end to end.
fn measure(ctor: Constructor<TransportBox>, config: &str) -> f64 {
    let mut rate = 0.0;
    run(async {
        let (h1, _) = counting_host();
        let (h2, received) = counting_host();
        let a: TransportBox =
            ctor(RStr::from_str("redis"), RStr::from_str(config), h1).await.unwrap();
        let b: TransportBox =
            ctor(RStr::from_str("redis"), RStr::from_str(config), h2).await.unwrap();
        b.subscribe(RStr::from_str("bench")).await.unwrap();
        let payload = vec![7u8; 100];
        let start = Instant::now();
        let mut sent = 0;
        while sent < MESSAGES {
            match a.try_publish(RStr::from_str("bench"), RVec::from(payload.clone())).into_result()
            {
                Ok(()) => sent += 1,
                Err(e) if e.code == ErrorCode::BACKPRESSURE => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        }
        while received.load(Ordering::Relaxed) < MESSAGES {
            tokio::task::yield_now().await;
        }
        rate = MESSAGES as f64 / start.elapsed().as_secs_f64();
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    });
    rate
}

fn main() {
    let redis = RedisServer::start();
    let config = format!("url = \"{}\"\nprefix = \"bench:\"\n", redis.url());
    let loaded = Target::new(cdylib("sockhost_redis"), "redis", &config).module();
    let loaded = loaded.transport().expect("a transport");
    let linked = sockhost_redis::root_module().transport().expect("a transport");
    let mut so = Vec::new();
    let mut rlib = Vec::new();
    for _ in 0..ROUNDS {
        rlib.push(measure(linked, &config));
        so.push(measure(loaded, &config));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (so, rlib) = (median(&mut so), median(&mut rlib));
    println!(
        "redis transport, {MESSAGES} messages of 100 bytes, median of {ROUNDS} alternating rounds"
    );
    println!("linked in:   {rlib:>10.0} messages/s");
    println!("loaded .so:  {so:>10.0} messages/s");
    println!("difference:  {:>+9.1}%", (so - rlib) / rlib * 100.0);
}
