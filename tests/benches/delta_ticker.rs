//! Delta compression on a ticker, in one node's hub: 1,000 subscribers of one channel, 2 KB
//! quotes where one field changes, two conflation keys. For each mode (whole events, fossil
//! deltas, xdelta3 deltas) it publishes the same stream and reports bytes enqueued per delivery
//! and hub time per delivery (one thread, so time is CPU), each as a ratio against whole events
//! from the same run. The socket writes that follow are the same per byte in every mode, so
//! bytes on the wire follow the bytes enqueued. The work is `sockhost::benchmarks::delta_ticker`.
//!
//! Run with: `cargo bench --workspace --bench delta_ticker`

use sockhost::benchmarks::delta_ticker;

const SUBSCRIBERS: usize = 1_000;
const EVENTS: u32 = 400;

fn main() {
    let (whole_bytes, whole_ns) = delta_ticker(SUBSCRIBERS, EVENTS, None);
    println!(
        "ticker, {SUBSCRIBERS} subscribers, {EVENTS} events of ~{} bytes, 2 conflation keys",
        whole_bytes as u64
    );
    println!("whole events: {whole_bytes:.0} bytes and {whole_ns:.0} ns of hub time per delivery");
    for algorithm in ["fossil", "xdelta3"] {
        let (bytes, ns) = delta_ticker(SUBSCRIBERS, EVENTS, Some(algorithm));
        println!(
            "{algorithm}: {bytes:.0} bytes ({:.3}x) and {ns:.0} ns ({:.2}x) per delivery",
            bytes / whole_bytes,
            ns / whole_ns,
        );
    }
}
