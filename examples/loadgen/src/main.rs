//! A load generator for Pusher-protocol servers: WebSocket subscribers and a signed HTTP
//! publisher, with every delivery counted and timed.
//!
//! Run with (a release build of the workspace first):
//! `./target/release/loadgen --publish 127.0.0.1:6001 --subscribers 1000 --channels 10 --rate 1000`
//!
//! Each event carries its send time (microseconds since the generator started, one clock for
//! publisher and subscribers); latency is receive time minus send time. Deliveries expected are
//! accepted events times the subscribers of their channel, so the delivery ratio exposes any
//! silent loss. With `--server-pid`, the server's RSS and CPU time are read from `/proc`.

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use sockhost::protocol::signature;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::Message;

/// Load generator for Pusher-protocol servers.
#[derive(Debug, Clone, Parser)]
struct Args {
    /// host:port the publisher sends HTTP API triggers to.
    #[arg(long, default_value = "127.0.0.1:6001")]
    publish: String,
    /// host:port of nodes the subscribers connect to, round-robin (default: --publish).
    #[arg(long)]
    subscribe: Vec<String>,
    /// App id.
    #[arg(long, default_value = "app-id")]
    app_id: String,
    /// App key.
    #[arg(long, default_value = "app-key")]
    key: String,
    /// App secret.
    #[arg(long, default_value = "app-secret")]
    secret: String,
    /// WebSocket subscribers.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Channels; subscriber i joins channel i mod channels.
    #[arg(long, default_value_t = 10)]
    channels: usize,
    /// Events per second asked of the publisher, over all channels; 0 publishes as fast as
    /// the server accepts with --in-flight requests outstanding.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Requests outstanding at the maximum rate (and the cap at a fixed rate).
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Bytes of padding in each event's data.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Only connect and subscribe, hold for --duration, report memory; publish nothing.
    #[arg(long)]
    idle: bool,
    /// The server's pid, for RSS and CPU time from /proc.
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Seconds to wait for deliveries after publishing stops.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Tag filtering: subscriber i filters on the tag `k` equal to (i / channels) mod this,
    /// and event n is tagged with k = (n / channels) mod this, so each event reaches the
    /// channel's subscribers of one value. 0: no filters, no tags.
    #[arg(long, default_value_t = 0)]
    filters: usize,
    /// The filter attack: every subscriber's filter is an `or` of this many `ct` leaves of
    /// --heavy-filter-bytes each (each subscriber's its own) that no event passes, so every
    /// leaf is tested for every event and nothing is delivered; events are tagged. Compare the
    /// publish rate with plain subscribers'. 0: off.
    #[arg(long, default_value_t = 0)]
    heavy_filter: usize,
    /// With --heavy-filter: every subscriber has the same filter (the attack as first
    /// measured), not one of its own.
    #[arg(long)]
    heavy_filter_shared: bool,
    /// Bytes of each leaf's value with --heavy-filter.
    #[arg(long, default_value_t = 470)]
    heavy_filter_bytes: usize,
    /// A ticker: each event's data is a ~2 KB quote where only the price, sequence and send
    /// time change, for one of two symbols (`sym`, the conflation key) in turn.
    #[arg(long)]
    ticker: bool,
    /// Ask for deltas (`fossil` or `xdelta3`) on every subscriber's connection, with
    /// `enable_delta_compression` before subscribing; deltas count as deliveries.
    #[arg(long)]
    delta: Option<String>,
    /// The protocol subscribers speak: 7 (Pusher) or 2 (Sockudo's, where Sockudo sends
    /// deltas).
    #[arg(long, default_value_t = 7)]
    protocol: u8,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Loopback source addresses to spread subscribers over (127.0.0.1, 127.0.0.2, ...): one
    /// address reaches one server port from at most the ephemeral port range (~28,000).
    #[arg(long, default_value_t = 1)]
    source_addresses: u8,
    /// With --idle: once held, close every subscriber and follow the server's RSS for this
    /// many seconds (memory given back after a spike).
    #[arg(long, default_value_t = 0.0)]
    release: f64,
    /// With --idle: once held, send the server SIGTERM and time until every subscriber has
    /// been closed by it.
    #[arg(long)]
    sigterm: bool,
}

fn clock() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A latency histogram shared by every task without a lock: 10 us buckets up to 100 ms, then
/// 1 ms buckets up to 60 s.
struct Histogram(Vec<AtomicU64>);

impl Default for Histogram {
    fn default() -> Self {
        Self((0..10_000 + 60_000).map(|_| AtomicU64::new(0)).collect())
    }
}

impl Histogram {
    fn record(&self, us: u64) {
        let bucket = if us < 100_000 { us / 10 } else { 10_000 + (us / 1000).min(59_999) - 100 };
        self.0[usize::try_from(bucket).unwrap_or(0).min(self.0.len() - 1)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The value at quantile `q`, in milliseconds (the bucket's upper edge).
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                let upper_us = if i < 10_000 {
                    (i as f64 + 1.0) * 10.0
                } else {
                    (i - 10_000 + 101) as f64 * 1000.0
                };
                return Some(upper_us / 1000.0);
            }
        }
        None
    }
}

/// Everything the subscribers count.
#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    /// Of the deliveries, how many came as deltas.
    deltas: AtomicU64,
    /// Bytes of the delivered frames.
    bytes: AtomicU64,
    disconnected: AtomicUsize,
    close_codes: Mutex<Vec<u16>>,
    latency: Histogram,
}

/// (RSS bytes, CPU seconds) of a process.
fn proc_stats(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let (user, kernel) = cpu_times(pid)?;
    Some((rss_kb * 1024, user + kernel))
}

/// (user, kernel) CPU seconds of a process.
fn cpu_times(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? / 100.0, ticks(12)? / 100.0))
}

/// (user, kernel) CPU seconds of the processes together.
fn cpu_split(pids: &[u32]) -> Option<(f64, f64)> {
    let mut total = (0.0, 0.0);
    for pid in pids {
        let (user, kernel) = cpu_times(*pid)?;
        total = (total.0 + user, total.1 + kernel);
    }
    (!pids.is_empty()).then_some(total)
}

fn server_stats(pids: &[u32]) -> Option<(u64, f64)> {
    let mut total = (0, 0.0);
    for pid in pids {
        let (rss, cpu) = proc_stats(*pid)?;
        total = (total.0 + rss, total.1 + cpu);
    }
    (!pids.is_empty()).then_some(total)
}

/// Counts subscriptions made, and wakes the waiter at each.
#[derive(Default)]
struct Ready {
    count: AtomicUsize,
    notify: Notify,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to `url` (`ws://host:port/...`), from `source` if given.
async fn connect(url: &str, source: Option<std::net::Ipv4Addr>) -> anyhow::Result<Socket> {
    let Some(source) = source else { return Ok(tokio_tungstenite::connect_async(url).await?.0) };
    let authority = url.trim_start_matches("ws://").split('/').next().unwrap_or_default();
    let server: std::net::SocketAddr = authority.parse().context("a host:port address")?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(socket.connect(server).await?);
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}

/// One subscriber: connect, subscribe (then release the connect slot), count every event.
async fn subscriber(
    (url, source): (String, Option<std::net::Ipv4Addr>),
    channel: String,
    filter: Option<Value>,
    delta: Option<String>,
    counts: Arc<Counts>,
    mut connect_slot: Option<OwnedSemaphorePermit>,
    ready: Arc<Ready>,
) -> anyhow::Result<()> {
    let mut ws = connect(&url, source).await.with_context(|| format!("connecting {url}"))?;
    let mut subscribed = false;
    while let Some(message) = ws.next().await {
        let text = match message {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(frame)) => {
                counts.disconnected.fetch_add(1, Ordering::Relaxed);
                counts.close_codes.lock().unwrap().push(frame.map_or(1005, |f| f.code.into()));
                break;
            }
            Ok(_) => continue,
            Err(_) => {
                counts.disconnected.fetch_add(1, Ordering::Relaxed);
                break;
            }
        };
        let received = clock();
        // The hot path reads the send time straight from the text: the generator shares the
        // machine's cores with the server, so its own cost per message must stay small.
        if text.starts_with(r#"{"event":"bench""#) {
            if let Some(sent) = sent_time(&text) {
                counts.latency.record(received.saturating_sub(sent));
            }
            counts.delivered.fetch_add(1, Ordering::Relaxed);
            counts.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
            continue;
        }
        // A delta is counted, not decoded (the generator shares the cores with the server):
        // its latency is not measured.
        if text.starts_with(r#"{"event":"sockudo:delta""#)
            || text.starts_with(r#"{"event":"pusher:delta""#)
        {
            counts.delivered.fetch_add(1, Ordering::Relaxed);
            counts.deltas.fetch_add(1, Ordering::Relaxed);
            counts.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
            continue;
        }
        let message: Value = serde_json::from_str(&text)?;
        let event = message["event"].as_str().map(|e| e.replacen("sockudo", "pusher", 1));
        match event.as_deref() {
            Some("pusher:connection_established") => {
                if let Some(algorithm) = &delta {
                    let enable = json!({
                        "event": "pusher:enable_delta_compression",
                        "data": { "algorithms": [algorithm] },
                    });
                    ws.send(Message::text(enable.to_string())).await?;
                }
                let mut data = json!({ "channel": channel });
                if let Some(filter) = &filter {
                    data["filter"] = filter.clone();
                }
                let subscribe = json!({ "event": "pusher:subscribe", "data": data });
                ws.send(Message::text(subscribe.to_string())).await?;
            }
            Some("pusher_internal:subscription_succeeded") if !subscribed => {
                subscribed = true;
                connect_slot = None;
                ready.count.fetch_add(1, Ordering::Release);
                ready.notify.notify_one();
            }
            Some("pusher:ping") => {
                ws.send(Message::text(r#"{"event":"pusher:pong","data":{}}"#)).await?
            }
            Some("pusher:error") => eprintln!("subscriber got {text}"),
            _ => {}
        }
    }
    drop(connect_slot);
    Ok(())
}

/// The `t` field of a bench event's (string-encoded) data: `...\"t\":12345,...`.
fn sent_time(frame: &str) -> Option<u64> {
    let marker = r#"\"t\":"#;
    let start = frame.find(marker)? + marker.len();
    let digits: &str = &frame[start..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

struct Publisher {
    http: reqwest::Client,
    args: Args,
    padding: String,
    /// With --ticker: the unchanging part of a quote (an order book of about 2 KB).
    book: Value,
    accepted: AtomicU64,
    refused: AtomicU64,
    per_channel: Vec<AtomicU64>,
    /// With --filters: events per (channel, tag value), at channel * filters + value.
    per_value: Vec<AtomicU64>,
    rtt: Histogram,
}

/// Subscriber `i`'s filter for --heavy-filter: `leaves` contains-tests of `bytes` each that
/// no event passes.
fn heavy_filter(i: usize, leaves: usize, bytes: usize) -> Value {
    let nodes: Vec<Value> = (0..leaves)
        .map(|leaf| {
            // Nearly the event's tag (a run of `z`), so every test scans it to its end.
            let tail = format!("-{i}-{leaf}");
            let val = format!("{}{tail}", "z".repeat(bytes.saturating_sub(tail.len())));
            json!({ "key": "t", "cmp": "ct", "val": val })
        })
        .collect();
    json!({ "op": "or", "nodes": nodes })
}

impl Publisher {
    async fn publish(&self, seq: u64) {
        let channel = (seq % self.args.channels as u64) as usize;
        let data = if self.args.ticker {
            let sym =
                if (seq / self.args.channels as u64).is_multiple_of(2) { "BTC" } else { "ETH" };
            let mut quote = self.book.clone();
            quote["sym"] = sym.into();
            quote["price"] = (1000 + seq % 97).into();
            quote["s"] = seq.into();
            quote["t"] = clock().into();
            quote.to_string()
        } else {
            json!({ "s": seq, "t": clock(), "p": self.padding }).to_string()
        };
        let mut body =
            json!({ "name": "bench", "channel": format!("bench-{channel}"), "data": data });
        if self.args.heavy_filter > 0 {
            body["tags"] = json!({ "k": seq.to_string(), "t": "z".repeat(1024) });
        } else if self.args.filters > 0 {
            let value = (seq / self.args.channels as u64) % self.args.filters as u64;
            body["tags"] = json!({ "k": value.to_string() });
            self.per_value[channel * self.args.filters + value as usize]
                .fetch_add(1, Ordering::Relaxed);
        }
        let body = body.to_string();
        let path = format!("/apps/{}/events", self.args.app_id);
        let timestamp =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string();
        let md5 = signature::body_md5(body.as_bytes());
        let mut params = vec![
            ("auth_key", self.args.key.as_str()),
            ("auth_timestamp", timestamp.as_str()),
            ("auth_version", "1.0"),
            ("body_md5", md5.as_str()),
        ];
        let sig = signature::sign(
            &self.args.secret,
            &signature::api_message("POST", &path, params.iter().copied()),
        );
        params.push(("auth_signature", sig.as_str()));
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
        let started = clock();
        let sent = self
            .http
            .post(format!("http://{}{path}?{query}", self.args.publish))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        let rtt = clock() - started;
        match sent {
            Ok(response) if response.status().is_success() => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                self.per_channel[channel].fetch_add(1, Ordering::Relaxed);
                self.rtt.record(rtt);
            }
            Ok(response) => {
                if self.refused.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!(
                        "publish refused: {} {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    );
                }
            }
            Err(e) => {
                if self.refused.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("publish failed: {e}");
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.channels == 0 || args.subscribers == 0 {
        bail!("--subscribers and --channels must be at least 1");
    }
    clock();
    let nodes =
        if args.subscribe.is_empty() { vec![args.publish.clone()] } else { args.subscribe.clone() };
    let before = server_stats(&args.server_pid);

    let counts = Arc::new(Counts::default());
    let ready = Arc::new(Ready::default());
    // Connections are opened a bounded number at a time, like clients arriving.
    let connecting = Arc::new(Semaphore::new(256));
    let connect_started = Instant::now();
    let mut subscribers = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let url = format!(
            "ws://{}/app/{}?protocol={}&client=loadgen&version=1.0",
            nodes[i % nodes.len()],
            args.key,
            args.protocol,
        );
        let channel = format!("bench-{}", i % args.channels);
        let filter = if args.heavy_filter > 0 {
            let owner = if args.heavy_filter_shared { 0 } else { i };
            Some(heavy_filter(owner, args.heavy_filter, args.heavy_filter_bytes))
        } else {
            (args.filters > 0).then(|| {
                let value = (i / args.channels) % args.filters;
                json!({ "key": "k", "cmp": "eq", "val": value.to_string() })
            })
        };
        let slot = connecting.clone().acquire_owned().await?;
        let (counts, ready, delta) = (counts.clone(), ready.clone(), args.delta.clone());
        let source = (args.source_addresses > 1).then(|| {
            std::net::Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(args.source_addresses)) as u8)
        });
        subscribers.push(tokio::spawn(async move {
            let run = subscriber((url, source), channel, filter, delta, counts, Some(slot), ready);
            if let Err(e) = run.await {
                eprintln!("subscriber failed: {e:#}");
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.count.load(Ordering::Acquire) < args.subscribers {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} subscribers subscribed within 120 s",
                ready.count.load(Ordering::Acquire),
                args.subscribers
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), ready.notify.notified()).await;
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let subscribed_stats = server_stats(&args.server_pid);

    if args.idle {
        tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
        let held = server_stats(&args.server_pid);
        let per_conn = match (before, held) {
            (Some((b, _)), Some((h, _))) => Some((h as f64 - b as f64) / args.subscribers as f64),
            _ => None,
        };
        let mut report = json!({
            "scenario": "idle",
            "subscribers": args.subscribers,
            "connect_seconds": connect_secs,
            "connects_per_second": args.subscribers as f64 / connect_secs,
            "server_rss_before_mb": before.map(|s| s.0 as f64 / 1048576.0),
            "server_rss_held_mb": held.map(|s| s.0 as f64 / 1048576.0),
            "rss_per_connection_kb": per_conn.map(|b| b / 1024.0),
            "disconnected": counts.disconnected.load(Ordering::Relaxed),
        });
        if args.sigterm {
            report["close_all_seconds"] = json!(sigterm(&args, &counts).await?);
        } else if args.release > 0.0 {
            for subscriber in &subscribers {
                subscriber.abort();
            }
            let before = before.map_or(0, |s| s.0);
            let (after, released) = release(&args, before).await;
            report["server_rss_after_close_mb"] = json!(after as f64 / 1048576.0);
            report["seconds_to_release"] = json!(released);
        }
        print_report(&args, &report);
        return Ok(());
    }

    let publisher = Arc::new(Publisher {
        http: reqwest::Client::builder().pool_max_idle_per_host(args.in_flight.max(64)).build()?,
        padding: "x".repeat(args.payload),
        book: json!({
            "book": (0..40)
                .map(|i| json!({ "level": i, "size": 1000 + i, "venue": "XNAS" }))
                .collect::<Vec<_>>(),
        }),
        accepted: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        per_channel: (0..args.channels).map(|_| AtomicU64::new(0)).collect(),
        per_value: (0..args.channels * args.filters).map(|_| AtomicU64::new(0)).collect(),
        rtt: Histogram::default(),
        args: args.clone(),
    });
    let seq = Arc::new(AtomicU64::new(0));
    let publish_started = Instant::now();
    let cpu_start = server_stats(&args.server_pid);
    let split_start = cpu_split(&args.server_pid);
    // The generator's own CPU over the same span: on a machine it shares with the server, what
    // the server (or a broker beside it) takes more is what the generator gets less.
    let own_start = cpu_split(&[std::process::id()]);
    let end = publish_started + Duration::from_secs_f64(args.duration);
    if args.rate <= 0.0 {
        let workers: Vec<_> = (0..args.in_flight)
            .map(|_| {
                let (publisher, seq) = (publisher.clone(), seq.clone());
                tokio::spawn(async move {
                    while Instant::now() < end {
                        publisher.publish(seq.fetch_add(1, Ordering::Relaxed)).await;
                    }
                })
            })
            .collect();
        for w in workers {
            w.await?;
        }
    } else {
        let in_flight = Arc::new(Semaphore::new(args.in_flight.max(1) * 8));
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut due = 0.0f64;
        let mut sent = 0u64;
        while Instant::now() < end {
            tick.tick().await;
            due = args.rate * publish_started.elapsed().as_secs_f64();
            while (sent as f64) < due {
                let Ok(permit) = in_flight.clone().try_acquire_owned() else { break };
                let (publisher, s) = (publisher.clone(), seq.fetch_add(1, Ordering::Relaxed));
                tokio::spawn(async move {
                    publisher.publish(s).await;
                    drop(permit);
                });
                sent += 1;
            }
        }
        let _ = due;
        let _ = in_flight.acquire_many(u32::try_from(args.in_flight.max(1) * 8)?).await;
    }
    let publish_secs = publish_started.elapsed().as_secs_f64();
    let cpu_end = server_stats(&args.server_pid);

    let subscribers_per_channel: Vec<u64> = (0..args.channels)
        .map(|c| ((args.subscribers + args.channels - 1 - c) / args.channels) as u64)
        .collect();
    let expected: u64 = if args.heavy_filter > 0 {
        0
    } else if args.filters > 0 {
        // Each event reaches the subscribers of its channel whose filter names its value.
        let mut subscribers = vec![0u64; args.channels * args.filters];
        for i in 0..args.subscribers {
            subscribers[(i % args.channels) * args.filters + (i / args.channels) % args.filters] +=
                1;
        }
        publisher
            .per_value
            .iter()
            .zip(&subscribers)
            .map(|(events, subs)| events.load(Ordering::Relaxed) * subs)
            .sum()
    } else {
        publisher
            .per_channel
            .iter()
            .zip(&subscribers_per_channel)
            .map(|(events, subs)| events.load(Ordering::Relaxed) * subs)
            .sum()
    };
    let drain_end = Instant::now() + Duration::from_secs_f64(args.drain);
    while counts.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = counts.delivered.load(Ordering::Relaxed);
    let split_end = cpu_split(&args.server_pid);
    let own_end = cpu_split(&[std::process::id()]);
    let accepted = publisher.accepted.load(Ordering::Relaxed);
    let cores = match (cpu_start, cpu_end) {
        (Some((_, a)), Some((_, b))) => Some((b - a) / publish_secs),
        _ => None,
    };
    let report = json!({
        "scenario": if args.rate <= 0.0 { "max-rate" } else { "fixed-rate" },
        "subscribers": args.subscribers,
        "channels": args.channels,
        "filters": args.filters,
        "asked_events_per_s": args.rate,
        "accepted_events": accepted,
        "refused_events": publisher.refused.load(Ordering::Relaxed),
        "accepted_events_per_s": accepted as f64 / publish_secs,
        "expected_deliveries": expected,
        "delivered": delivered,
        "delivery_ratio": if expected == 0 { f64::NAN } else { delivered as f64 / expected as f64 },
        "deliveries_per_s": delivered as f64 / publish_secs,
        "delta_deliveries": counts.deltas.load(Ordering::Relaxed),
        "bytes_per_delivery": counts.bytes.load(Ordering::Relaxed) as f64 / delivered.max(1) as f64,
        "server_cpu_us_per_delivery": match (cpu_start, server_stats(&args.server_pid)) {
            (Some((_, a)), Some((_, b))) => Some((b - a) * 1e6 / delivered.max(1) as f64),
            _ => None,
        },
        "server_cpu_user_us_per_delivery": split_start.zip(split_end).map(|(a, b)| (b.0 - a.0) * 1e6 / delivered.max(1) as f64),
        "server_cpu_kernel_us_per_delivery": split_start.zip(split_end).map(|(a, b)| (b.1 - a.1) * 1e6 / delivered.max(1) as f64),
        "latency_ms_p50": counts.latency.quantile_ms(0.50),
        "latency_ms_p99": counts.latency.quantile_ms(0.99),
        "latency_ms_max": counts.latency.quantile_ms(1.0),
        "http_rtt_ms_p50": publisher.rtt.quantile_ms(0.50),
        "http_rtt_ms_p99": publisher.rtt.quantile_ms(0.99),
        "disconnected": counts.disconnected.load(Ordering::Relaxed),
        "close_codes": *counts.close_codes.lock().unwrap(),
        "server_cores": cores,
        "loadgen_cpu_s": own_start.zip(own_end).map(|(a, b)| (b.0 + b.1) - (a.0 + a.1)),
        "server_rss_mb": subscribed_stats.map(|s| s.0 as f64 / 1048576.0),
    });
    print_report(&args, &report);
    Ok(())
}

/// Follow the server's RSS for `--release` seconds after its connections closed: the RSS at
/// the end, and the seconds until it was back within 1.5x `before` + 10 MB (if it was).
async fn release(args: &Args, before: u64) -> (u64, Option<f64>) {
    let goal = before as f64 * 1.5 + 10.0 * 1048576.0;
    let started = Instant::now();
    let (mut rss, mut released) = (0, None);
    while started.elapsed().as_secs_f64() < args.release {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss = server_stats(&args.server_pid).map_or(0, |s| s.0);
        if released.is_none() && (rss as f64) <= goal {
            released = Some(started.elapsed().as_secs_f64());
        }
    }
    (rss, released)
}

/// Send the server SIGTERM and wait until it has closed every subscriber: the seconds it took.
async fn sigterm(args: &Args, counts: &Counts) -> anyhow::Result<f64> {
    let started = Instant::now();
    for pid in &args.server_pid {
        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    }
    while counts.disconnected.load(Ordering::Acquire) < args.subscribers {
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "{} subscribers still open 120 s after SIGTERM",
                args.subscribers - counts.disconnected.load(Ordering::Acquire)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn print_report(args: &Args, report: &Value) {
    if args.json {
        println!("{report}");
        return;
    }
    for (key, value) in report.as_object().into_iter().flatten() {
        println!("{key:>24}: {value}");
    }
}
