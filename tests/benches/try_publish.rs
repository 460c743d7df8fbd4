//! The cost of the plugin boundary on the hot path: `try_publish` of the `local` transport,
//! called through the loaded `.so` and directly on the same code linked in as an rlib.
//!
//! Run with: `cargo build --release --workspace && cargo bench --workspace --bench try_publish`
//!
//! Two scenarios: the topic has no subscriber (the call and the payload's allocation and drop:
//! what a single node pays per broadcast), and the topic has one subscriber in the process
//! (the call plus a callback into the host per message).

use std::{sync::atomic::Ordering, time::Instant};

use sockhost_local::LocalTransport;
use sockhost_plugin_api::{
    TransportBox,
    abi::{RStr, RVec},
    conformance::{Target, run},
    sdk::TransportDriver as _,
};
use sockhost_tests::counting::counting_host;

const CALLS: u64 = 5_000_000;
const ROUNDS: usize = 5;

/// Median nanoseconds per call of `call` over the rounds.
fn measure(mut call: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..CALLS {
                call();
            }
            start.elapsed().as_nanos() as f64 / CALLS as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn payload() -> RVec<u8> {
    RVec::from(vec![7u8; 16])
}

fn main() {
    let target =
        Target::new(sockhost_plugin_api::conformance::cdylib("sockhost_local"), "local", "");
    let module = target.module();
    let ctor = module.transport().expect("the local plugin provides a transport");
    let (so_pub, so_sub, so_count): (TransportBox, TransportBox, _) = {
        let mut made = None;
        run(async {
            let (h1, _) = counting_host();
            let (h2, count) = counting_host();
            let a = ctor(RStr::from_str("local"), RStr::from_str(""), h1).await.unwrap();
            let b = ctor(RStr::from_str("local"), RStr::from_str(""), h2).await.unwrap();
            b.subscribe(RStr::from_str("subscribed")).await.unwrap();
            made = Some((a, b, count));
        });
        made.unwrap()
    };
    let (h1, _) = counting_host();
    let (h2, rlib_count) = counting_host();
    let rlib_pub = LocalTransport::new("", h1).unwrap();
    let rlib_sub = LocalTransport::new("", h2).unwrap();
    run(async { rlib_sub.subscribe("subscribed").await.unwrap() });

    let topic = RStr::from_str("nobody-listens");
    let rlib_none = measure(|| rlib_pub.try_publish("nobody-listens", payload()).unwrap());
    let so_none = measure(|| so_pub.try_publish(topic, payload()).unwrap());
    let sub = RStr::from_str("subscribed");
    let rlib_one = measure(|| rlib_pub.try_publish("subscribed", payload()).unwrap());
    let so_one = measure(|| so_pub.try_publish(sub, payload()).unwrap());
    assert_eq!(rlib_count.load(Ordering::Relaxed), CALLS * ROUNDS as u64);
    assert_eq!(so_count.load(Ordering::Relaxed), CALLS * ROUNDS as u64);
    drop(so_sub);

    println!("try_publish of a 16-byte payload, median of {ROUNDS} rounds of {CALLS} calls");
    println!("{:<34} {:>10} {:>10} {:>10}", "scenario", "rlib ns", ".so ns", "added ns");
    for (name, rlib, so) in [
        ("no subscriber", rlib_none, so_none),
        ("one subscriber (host callback)", rlib_one, so_one),
    ] {
        println!("{name:<34} {rlib:>10.1} {so:>10.1} {:>10.1}", so - rlib);
    }
}
