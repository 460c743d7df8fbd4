//! Churn against one Pusher-protocol server, with its resident size followed every
//! `--sample` seconds: whether what comes and goes leaves memory behind.
//!
//! - `churn --mode subscribe`: `--clients` connections stay open and subscribe to and leave a
//!   channel in turn, `--rate` cycles a second over all of them (scenario E); the
//!   acknowledgement's latency is reported.
//! - `churn --mode connect`: `--rate` new connections a second, each subscribing to a channel
//!   and closing once acknowledged (a reconnect storm that never ends).
//!
//! `churn --url ws://127.0.0.1:6001/app/app-key --server-pid <pid> --mode connect --rate 1000`

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Subscribe and unsubscribe on open connections.
    Subscribe,
    /// Open, subscribe and close connections.
    Connect,
}

/// Churn against a Pusher-protocol server.
#[derive(Debug, Clone, Parser)]
struct Args {
    /// The app's WebSocket URL, without the query.
    #[arg(long, default_value = "ws://127.0.0.1:6001/app/app-key")]
    url: String,
    /// The server's pid, for its resident size.
    #[arg(long)]
    server_pid: u32,
    #[arg(long, value_enum, default_value_t = Mode::Connect)]
    mode: Mode,
    /// Cycles (subscribe) or connections (connect) a second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Open connections with --mode subscribe.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Seconds between samples of the server's resident size.
    #[arg(long, default_value_t = 10.0)]
    sample: f64,
}

#[derive(Default)]
struct Tally {
    done: AtomicU64,
    failed: AtomicU64,
    /// Acknowledgement latencies, in microseconds.
    latencies: Mutex<Vec<u64>>,
}

impl Tally {
    /// Count one operation: its acknowledgement's latency, or a failure. Whether it succeeded.
    fn record(&self, outcome: anyhow::Result<u64>) -> bool {
        match outcome {
            Ok(latency) => {
                self.done.fetch_add(1, Ordering::Relaxed);
                self.latencies.lock().unwrap().push(latency);
                true
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next event that is not a ping.
async fn next_event(ws: &mut Socket) -> anyhow::Result<Value> {
    loop {
        match ws.next().await.context("closed")?? {
            Message::Text(text) => {
                let event: Value = serde_json::from_str(&text)?;
                if event["event"] != "pusher:ping" {
                    return Ok(event);
                }
            }
            Message::Close(_) => bail!("closed by the server"),
            _ => {}
        }
    }
}

/// Subscribe to `channel` and wait for the acknowledgement: its latency in microseconds.
async fn subscribe(ws: &mut Socket, channel: &str) -> anyhow::Result<u64> {
    let started = Instant::now();
    let subscribe = json!({ "event": "pusher:subscribe", "data": { "channel": channel } });
    ws.send(Message::text(subscribe.to_string())).await?;
    let event = next_event(ws).await?;
    if event["event"] != "pusher_internal:subscription_succeeded" {
        bail!("not acknowledged: {event}");
    }
    Ok(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX))
}

async fn connect(url: &str) -> anyhow::Result<Socket> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?protocol=7")).await?;
    let event = next_event(&mut ws).await?;
    if event["event"] != "pusher:connection_established" {
        bail!("not established: {event}");
    }
    Ok(ws)
}

/// One connection's life: connect, subscribe, close.
async fn connection(url: String, n: u64, tally: Arc<Tally>) {
    let life = async {
        let mut ws = connect(&url).await?;
        let latency = subscribe(&mut ws, &format!("churn-{}", n % 100)).await?;
        ws.close(None).await?;
        anyhow::Ok(latency)
    };
    tally.record(life.await);
}

/// One open connection cycling through subscribe and unsubscribe, `per_second` times a second.
async fn cycler(url: String, id: usize, per_second: f64, until: Instant, tally: Arc<Tally>) {
    let Ok(mut ws) = connect(&url).await else {
        tally.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let channel = format!("churn-{id}");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    while Instant::now() < until {
        tick.tick().await;
        let cycle = async {
            let latency = subscribe(&mut ws, &channel).await?;
            let leave = json!({ "event": "pusher:unsubscribe", "data": { "channel": channel } });
            ws.send(Message::text(leave.to_string())).await?;
            anyhow::Ok(latency)
        };
        if !tally.record(cycle.await) {
            return;
        }
    }
}

fn quantile_ms(sorted: &[u64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let at = ((sorted.len() as f64) * q).ceil() as usize;
    Some(sorted[at.saturating_sub(1).min(last)] as f64 / 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rate <= 0.0 || args.duration <= 0.0 {
        bail!("--rate and --duration must be above 0");
    }
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    let mut samples = vec![(0.0, rss_mb(args.server_pid))];
    let mut tasks = Vec::new();
    match args.mode {
        Mode::Subscribe => {
            let per_client = args.rate / args.clients.max(1) as f64;
            for id in 0..args.clients {
                let (url, tally) = (args.url.clone(), tally.clone());
                tasks.push(tokio::spawn(cycler(url, id, per_client, until, tally)));
            }
        }
        Mode::Connect => {
            let (url, tally, rate) = (args.url.clone(), tally.clone(), args.rate);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                let mut n = 0;
                let mut lives = tokio::task::JoinSet::new();
                while Instant::now() < until {
                    tick.tick().await;
                    lives.spawn(connection(url.clone(), n, tally.clone()));
                    n += 1;
                    while lives.try_join_next().is_some() {}
                }
                while lives.join_next().await.is_some() {}
            }));
        }
    }
    let mut next_sample = Duration::from_secs_f64(args.sample);
    while Instant::now() < until {
        tokio::time::sleep_until((started + next_sample).min(until).into()).await;
        samples.push((started.elapsed().as_secs_f64(), rss_mb(args.server_pid)));
        next_sample += Duration::from_secs_f64(args.sample);
    }
    for task in tasks {
        task.await?;
    }
    samples.push((started.elapsed().as_secs_f64(), rss_mb(args.server_pid)));
    let mut latencies = std::mem::take(&mut *tally.latencies.lock().unwrap());
    latencies.sort_unstable();
    let report = json!({
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "asked_per_s": args.rate,
        "done": tally.done.load(Ordering::Relaxed),
        "done_per_s": tally.done.load(Ordering::Relaxed) as f64 / args.duration,
        "failed": tally.failed.load(Ordering::Relaxed),
        "ack_ms_p50": quantile_ms(&latencies, 0.50),
        "ack_ms_p99": quantile_ms(&latencies, 0.99),
        "server_rss_mb": samples.iter().map(|(t, mb)| json!([(t * 10.0).round() / 10.0, (mb * 10.0).round() / 10.0])).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
