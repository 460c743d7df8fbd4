//! What an operator sees of a node: readiness (`/ready`) and admission under memory pressure,
//! logs for machines (JSON with the connection's fields) and for people (colour only where
//! asked), and one-line refusals at start.

use serde_json::Value;
use sockhost_tests::{
    private_dir,
    pusher::{Client, TestApp},
    server::{Server, run_to_exit},
    sockhost_bin,
};

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A node is ready by default; above its memory threshold it answers `/ready` with 503 and
/// refuses new connections with 4100 (counted), while `/up` still says it works and the
/// connections it has keep working.
#[tokio::test]
async fn over_its_memory_threshold_a_node_is_not_ready_and_admits_no_one() {
    let app = TestApp::main();
    let healthy = Server::start();
    assert_eq!(
        get(&format!("{}/ready", healthy.http_url())).await,
        (200, serde_json::json!({ "ready": true }))
    );
    assert_eq!(healthy.metric("sockhost_ready").await, 1.0);

    // Any running node is above 1 MiB resident.
    let server = Server::builder().env("READINESS_MAX_MEMORY_MB", "1").start();
    server.wait_for_metric("sockhost_ready", |v| v == 0.0).await;
    let (status, body) = get(&format!("{}/ready", server.http_url())).await;
    assert_eq!((status, &body["reason"]), (503, &Value::from("memory")), "{body}");
    assert_eq!(get(&format!("{}/up", server.http_url())).await.0, 200);
    let mut refused = Client::connect_raw(&server.ws_url(&app.key)).await;
    assert!(refused.expect_error(4100).await.contains("memory"));
    assert_eq!(refused.expect_close().await.0, 4100);
    assert_eq!(server.labelled_metric("sockhost_edge_refused_total{reason=\"memory\"}").await, 1.0);
    assert!(server.log().contains("Over the memory threshold"), "{}", server.log());
}

/// With `LOG_FORMAT=json` every line is a JSON object, and a line about a connection carries
/// its socket id and app.
#[tokio::test]
async fn json_logs_carry_the_connection() {
    let app = TestApp::main();
    let server =
        Server::builder().env("LOG_FORMAT", "json").env("RUST_LOG", "info,sockhost=debug").start();
    let client = Client::connect(&server.ws_url(&app.key)).await;
    let socket_id = client.socket_id.clone();
    client.close().await;
    server.wait_for_metric("sockhost_connected", |v| v == 0.0).await;
    let log = server.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let about = lines
        .iter()
        .find(|l| l["fields"]["message"] == "Disconnected.")
        .unwrap_or_else(|| panic!("no disconnection logged: {log}"));
    assert_eq!(about["span"]["socket_id"], socket_id.as_str(), "{about}");
    assert_eq!(about["span"]["app"], app.id.as_str(), "{about}");
    assert_eq!(about["level"], "DEBUG");
}

/// Text logs written to a file have no colour unless asked for; a bad log setting is a
/// one-line refusal naming the field.
#[tokio::test]
async fn colour_only_where_asked() {
    let plain = Server::builder().env("NO_COLOR", "").start();
    assert!(!plain.log().contains('\u{1b}'), "{}", plain.log());
    let coloured = Server::builder().env("LOG_COLOR", "always").start();
    assert!(coloured.log().contains("\u{1b}["), "{}", coloured.log());

    let dir = private_dir();
    let (code, out) = run_to_exit(dir.path(), &[], &[("LOG_FORMAT", "yaml")]);
    assert_ne!(code, Some(0));
    assert!(out.contains("log.format") && out.contains("yaml"), "{out}");
}

/// A binary copied without a plugin manifest beside it stops with one line, even with
/// `RUST_BACKTRACE` set.
#[test]
fn a_missing_manifest_is_one_line() {
    let dir = private_dir();
    let bin = dir.path().join("sockhost");
    std::fs::copy(sockhost_bin(), &bin).unwrap();
    let out = std::process::Command::new(&bin)
        .current_dir(dir.path())
        .env_remove("SOCKHOST_PLUGINS")
        .env("RUST_BACKTRACE", "1")
        .env("PORT", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains("plugins.toml"), "{stderr}");
}

/// `scripts/release` bundles the binary and the chosen plugins with a manifest pinning each
/// file; the bundle starts the way its systemd unit starts it, and a plugin file changed after
/// pinning is refused at start in one line.
#[tokio::test]
async fn the_release_bundle_starts_as_its_unit_says_and_holds_its_pins() {
    let root = sockhost_tests::workspace_root();
    let profile = sockhost_tests::target_dir();
    let profile = profile.file_name().unwrap().to_str().unwrap();
    let dir = private_dir();
    let bundle = dir.path().join("bundle");
    let status = std::process::Command::new(root.join("scripts/release"))
        .args(["--no-build", "--profile", profile, "--plugins", "local,redis"])
        .arg("--out")
        .arg(&bundle)
        .status()
        .unwrap();
    assert!(status.success());
    let manifest = std::fs::read_to_string(bundle.join("plugins.toml")).unwrap();
    assert_eq!(manifest.matches("sha256 = ").count(), 2, "{manifest}");

    // ExecStart as the unit has it, with the bundle where the unit expects /opt/sockhost.
    let unit = std::fs::read_to_string(bundle.join("sockhost.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    let argv: Vec<String> = exec
        .split_whitespace()
        .map(|a| {
            a.replace("/opt/sockhost", bundle.to_str().unwrap())
                .replace("/etc/sockhost/sockhost.toml", "{config}")
        })
        .collect();
    let server = Server::builder().exec(argv.clone()).start();
    let app = TestApp::main();
    Client::connect(&server.ws_url(&app.key)).await;
    drop(server);

    let plugin = bundle.join("libsockhost_redis.so");
    let mut bytes = std::fs::read(&plugin).unwrap();
    bytes.push(0);
    std::fs::write(&plugin, bytes).unwrap();
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let out = std::process::Command::new(&argv[0])
        .args(argv[1..].iter().map(|a| a.replace("{config}", config.to_str().unwrap())))
        .env("PORT", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("checksum mismatch") && stderr.contains("libsockhost_redis.so"),
        "{stderr}"
    );
}

/// A spike of connections takes memory, and once they have closed the node gives it back
/// (jemalloc's background purging, within its decay time): its resident size returns within
/// 1.5 times what it was before plus 10 MB. The allocator's own figures are exported.
#[tokio::test]
async fn memory_a_spike_of_connections_took_is_given_back() {
    use futures_util::StreamExt as _;
    const SPIKE: usize = 12_000;
    let app = TestApp::main();
    let server = Server::builder().env("EDGE_MAX_CONNECTIONS_PER_IP", "0").start();
    let allocated = server.metric("sockhost_allocator_allocated_bytes").await;
    assert!(allocated > 0.0, "{}", server.metrics().await);
    let before = server.rss_bytes() as f64;
    let goal = before * 1.5 + 10.0 * 1024.0 * 1024.0;

    let clients: Vec<Client> = futures_util::stream::iter(0..SPIKE)
        .map(|i| {
            let (url, app) = (server.ws_url(&app.key), app.clone());
            async move {
                let mut client = Client::connect(&url).await;
                client.subscribe(&app, &format!("spike-{}", i % 100)).await;
                client
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let held = server.rss_bytes() as f64;
    assert!(held > goal, "the spike is too small to tell: {held} bytes held, goal {goal}");
    assert!(server.metric("sockhost_allocator_allocated_bytes").await > allocated);

    futures_util::stream::iter(clients).for_each_concurrent(64, Client::close).await;
    server.wait_for_metric("sockhost_connected", |v| v == 0.0).await;
    sockhost_tests::wait::eventually_within(
        "the spike's memory given back",
        std::time::Duration::from_secs(60),
        async || {
            let now = server.rss_bytes() as f64;
            sockhost_tests::wait::holds(
                now <= goal,
                format_args!("{now} bytes resident, before the spike {before}, goal {goal}"),
            )
        },
    )
    .await;
}
