//! A resume storm: many protocol-2 clients of one node, a publisher at a steady rate, and the
//! node restarted (SIGTERM, then started again) while they listen. Every client reconnects as
//! soon as the node answers and resumes from its last position. Reported: how long until every
//! client had resumed, what each got (every accepted event of its channel once and in order, or
//! counted as missing / doubled / out of order), and the new node's CPU and peak RSS meanwhile.
//!
//! `resume_storm --server "<command>" --port <port> --clients 10000`: the command starts the
//! server on `port` (run with `sh -c`, twice). With `--no-resume` the clients only subscribe
//! again (the baseline: what a reconnect costs without recovery).

use std::{
    collections::HashMap,
    process::{Child, Command},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use sockhost::protocol::signature;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

/// Resume storm against a Pusher-protocol server with connection recovery.
#[derive(Debug, Clone, Parser)]
struct Args {
    /// The shell command that starts the server.
    #[arg(long)]
    server: String,
    /// Its WebSocket and HTTP port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "app-id")]
    app_id: String,
    #[arg(long, default_value = "app-key")]
    key: String,
    #[arg(long, default_value = "app-secret")]
    secret: String,
    /// Clients, spread over the channels.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    #[arg(long, default_value_t = 100)]
    channels: usize,
    /// Events per second, over all channels.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of publishing before the restart.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Subscribe again without resuming (the baseline).
    #[arg(long)]
    no_resume: bool,
    /// Seconds to wait for every client to be back.
    #[arg(long, default_value_t = 120.0)]
    patience: f64,
}

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    /// The publisher's sequence numbers of the events it got, in order.
    got: Vec<u64>,
    /// Its position: stream id and serial.
    position: Option<(String, u64)>,
    /// Subscribed (first time), and back after the restart (resumed or subscribed again).
    subscribed: bool,
    back: bool,
    /// Resume failures, by code.
    failed: Vec<String>,
}

/// Shared between the clients and the run.
#[derive(Default)]
struct State {
    subscribed: AtomicUsize,
    back: AtomicUsize,
    /// Set once the node was stopped: clients resume from then on.
    restarted: AtomicBool,
    /// Set once the node was started again: a client connected after it is "back" once it
    /// resumed (or subscribed again); not one that reached the draining node.
    started_again: AtomicBool,
}

fn now_secs() -> String {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string()
}

async fn client(args: Arc<Args>, channel: usize, seen: Arc<Mutex<Seen>>, state: Arc<State>) {
    let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2", args.port, args.key);
    let name = format!("storm-{channel}");
    loop {
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
            // The node is down: try again soon, spread out.
            let jitter = u64::try_from(channel % 50).unwrap_or(0) * 4;
            tokio::time::sleep(Duration::from_millis(100 + jitter)).await;
            continue;
        };
        let position = seen.lock().unwrap().position.clone();
        let counts = state.started_again.load(Ordering::Acquire);
        let resuming = state.restarted.load(Ordering::Acquire) && !args.no_resume;
        if let (true, Some((stream_id, serial))) = (resuming, &position) {
            let positions = json!({ name.as_str(): { "stream_id": stream_id, "serial": serial } });
            let data = json!({ "channel_positions": positions }).to_string();
            let resume = json!({ "event": "sockudo:resume", "data": data }).to_string();
            if ws.send(Message::text(resume)).await.is_err() {
                continue;
            }
        }
        let subscribe = json!({ "event": "sockudo:subscribe", "data": { "channel": name } });
        if ws.send(Message::text(subscribe.to_string())).await.is_err() {
            continue;
        }
        while let Some(Ok(frame)) = ws.next().await {
            let Message::Text(text) = frame else { continue };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
            let mut seen = seen.lock().unwrap();
            match frame["event"].as_str().unwrap_or_default() {
                "sockudo_internal:subscription_succeeded" => {
                    if !seen.subscribed {
                        seen.subscribed = true;
                        if let Some(stream) = frame["stream_id"].as_str() {
                            let serial = frame["serial"].as_u64().unwrap_or(0);
                            seen.position = Some((stream.to_string(), serial));
                        }
                        state.subscribed.fetch_add(1, Ordering::Relaxed);
                    } else if counts && (args.no_resume || position.is_none()) && !seen.back {
                        seen.back = true;
                        state.back.fetch_add(1, Ordering::Relaxed);
                    }
                }
                "storm" => {
                    let data = frame["data"].as_str().and_then(|d| d.parse::<u64>().ok());
                    seen.got.extend(data);
                    if let (Some(stream), Some(serial)) =
                        (frame["stream_id"].as_str(), frame["serial"].as_u64())
                    {
                        seen.position = Some((stream.to_string(), serial));
                    }
                }
                "sockudo:resume_failed" => {
                    let failure: Value = frame["data"]
                        .as_str()
                        .and_then(|d| serde_json::from_str(d).ok())
                        .unwrap_or_default();
                    seen.failed.push(failure["code"].as_str().unwrap_or("?").to_string());
                }
                "sockudo:resume_success" if counts && !seen.back => {
                    seen.back = true;
                    state.back.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }
}

/// The publisher: `rate` events per second, round robin over the channels; each event's data
/// is its sequence number. Accepted ones are kept per channel; ones whose answer was lost (the
/// node stopping) may or may not have gone out.
struct Published {
    accepted: Vec<Vec<u64>>,
    unsure: Vec<u64>,
}

async fn publish(
    args: &Args,
    http: &reqwest::Client,
    seq: u64,
    channel: usize,
) -> Result<bool, reqwest::Error> {
    let body =
        json!({ "name": "storm", "channel": format!("storm-{channel}"), "data": seq.to_string() })
            .to_string();
    let path = format!("/apps/{}/events", args.app_id);
    let (timestamp, md5) = (now_secs(), signature::body_md5(body.as_bytes()));
    let mut params = vec![
        ("auth_key", args.key.as_str()),
        ("auth_timestamp", timestamp.as_str()),
        ("auth_version", "1.0"),
        ("body_md5", md5.as_str()),
    ];
    let message = signature::api_message("POST", &path, params.iter().copied());
    let sig = signature::sign(&args.secret, &message);
    params.push(("auth_signature", sig.as_str()));
    let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    let url = format!("http://127.0.0.1:{}{path}?{query}", args.port);
    let response =
        http.post(url).header("content-type", "application/json").body(body).send().await?;
    Ok(response.status().is_success())
}

fn start(args: &Args) -> anyhow::Result<Child> {
    Command::new("sh").arg("-c").arg(format!("exec {}", args.server)).spawn().context("the server")
}

async fn wait_up(port: u16, patience: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let http = reqwest::Client::new();
    while started.elapsed() < patience {
        if http.get(format!("http://127.0.0.1:{port}/up")).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the server did not answer within {patience:?}")
}

/// (RSS bytes, CPU seconds) of a process, from /proc.
fn proc_stats(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((rss.parse::<u64>().ok()? * 1024, ticks / 100.0))
}

async fn wait_for(count: &AtomicUsize, wanted: usize, patience: Duration) -> Option<Duration> {
    let started = Instant::now();
    while count.load(Ordering::Relaxed) < wanted {
        if started.elapsed() > patience {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Some(started.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let patience = Duration::from_secs_f64(args.patience);
    let mut server = start(&args)?;
    wait_up(args.port, patience).await?;

    let state = Arc::new(State::default());
    let mut seen = Vec::with_capacity(args.clients);
    let connecting = Arc::new(Semaphore::new(500));
    for i in 0..args.clients {
        let one = Arc::new(Mutex::new(Seen::default()));
        seen.push(one.clone());
        let (args, state, permit) = (args.clone(), state.clone(), connecting.clone());
        tokio::spawn(async move {
            let permit = permit.acquire_owned().await;
            drop(permit);
            client(args.clone(), i % args.channels, one, state).await;
        });
    }
    if wait_for(&state.subscribed, args.clients, patience).await.is_none() {
        bail!(
            "only {} of {} clients subscribed",
            state.subscribed.load(Ordering::Relaxed),
            args.clients
        );
    }

    // The publisher runs until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(Mutex::new(Published {
        accepted: vec![Vec::new(); args.channels],
        unsure: Vec::new(),
    }));
    let publisher = {
        let (args, stop, published) = (args.clone(), stop.clone(), published.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let every = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
            let mut tick = tokio::time::interval(every);
            let mut seq = 0u64;
            while !stop.load(Ordering::Acquire) {
                tick.tick().await;
                seq += 1;
                let channel = usize::try_from(seq).unwrap_or(0) % args.channels;
                match publish(&args, &http, seq, channel).await {
                    Ok(true) => published.lock().unwrap().accepted[channel].push(seq),
                    Ok(false) => {}
                    Err(_) => published.lock().unwrap().unsure.push(seq),
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;

    // The restart: SIGTERM, wait for the exit, start again.
    state.restarted.store(true, Ordering::Release);
    let pid = server.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    let stopping = Instant::now();
    server.wait()?;
    let stopped_in = stopping.elapsed();
    let started = Instant::now();
    state.started_again.store(true, Ordering::Release);
    let mut server = start(&args)?;
    let pid = server.id();
    let cpu_before = proc_stats(pid).map_or(0.0, |s| s.1);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            while let Some((rss, _)) = proc_stats(pid) {
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    wait_up(args.port, patience).await?;
    let up_in = started.elapsed();
    let all_back = wait_for(&state.back, args.clients, patience).await;
    let back_in = started.elapsed();
    let cpu_storm = proc_stats(pid).map_or(0.0, |s| s.1) - cpu_before;
    let rss_peak = peak.load(Ordering::Relaxed);

    // Two more seconds of publishing, then everything accepted must arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Release);
    publisher.await?;
    let published = Arc::try_unwrap(published)
        .map_err(|_| anyhow::anyhow!("the publisher still holds its record"))?
        .into_inner()
        .unwrap();
    let expected: usize =
        (0..args.clients).map(|i| published.accepted[i % args.channels].len()).sum();
    let drain = Instant::now();
    loop {
        let got: usize = seen.iter().map(|s| s.lock().unwrap().got.len()).sum();
        if got >= expected || drain.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (mut missing, mut doubled, mut unordered, mut extra) = (0usize, 0usize, 0usize, 0usize);
    let mut failures: HashMap<String, usize> = HashMap::new();
    for (i, one) in seen.iter().enumerate() {
        let one = one.lock().unwrap();
        let wanted = &published.accepted[i % args.channels];
        let mut counts: HashMap<u64, usize> = HashMap::new();
        for n in &one.got {
            *counts.entry(*n).or_default() += 1;
        }
        missing += wanted.iter().filter(|n| !counts.contains_key(n)).count();
        doubled += counts.values().filter(|c| **c > 1).map(|c| c - 1).sum::<usize>();
        unordered += one.got.windows(2).filter(|w| w[1] <= w[0]).count();
        extra +=
            counts.keys().filter(|n| !wanted.contains(n) && !published.unsure.contains(n)).count();
        for code in &one.failed {
            *failures.entry(code.clone()).or_default() += 1;
        }
    }
    let (rss_after, _) = proc_stats(pid).unwrap_or_default();
    Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    let _ = server.wait();
    sampler.abort();
    let report = json!({
        "clients": args.clients,
        "channels": args.channels,
        "rate": args.rate,
        "resume": !args.no_resume,
        "stopped_in_ms": stopped_in.as_millis(),
        "node_up_ms": up_in.as_millis(),
        "all_back_ms": all_back.map(|_| back_in.as_millis()),
        "back": state.back.load(Ordering::Relaxed),
        "events_accepted": published.accepted.iter().map(Vec::len).sum::<usize>(),
        "events_unsure": published.unsure.len(),
        "deliveries_expected": expected,
        "missing": missing,
        "doubled": doubled,
        "out_of_order": unordered,
        "unexpected": extra,
        "resume_failures": failures,
        "server_cpu_s_until_all_back": cpu_storm,
        "server_rss_peak_mb": rss_peak as f64 / 1_048_576.0,
        "server_rss_after_mb": rss_after as f64 / 1_048_576.0,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
