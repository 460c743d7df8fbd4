//! Configuration through the real binary: layering, and refusals that list every problem.

use std::path::Path;

use serde_json::json;
use sockhost_tests::{
    private_dir,
    pusher::{Api, Client, TestApp},
    server::{Server, free_port, run_to_exit},
    workspace_root,
};

/// Wait until a server answers WebSocket connections at `url`.
async fn started(url: &str, what: &str) {
    sockhost_tests::wait::eventually(what, async || {
        tokio_tungstenite::connect_async(url).await.map(drop).map_err(|e| e.to_string())
    })
    .await;
}

fn manifest() -> String {
    workspace_root().join("plugins.toml").display().to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn every_problem_is_listed_at_once_naming_the_file_and_field() {
    let dir = private_dir();
    let config = write(
        dir.path(),
        "sockhost.toml",
        "bogus = 1\nport = \"high\"\n[event_limits]\nmax_batch = 3\n[presence]\nmax_members_per_channel = 0\n\
         [adapter]\ndriver = \"local\"\nredis_url = \"x\"\n",
    );
    let (code, out) = run_to_exit(
        dir.path(),
        &["--config", &config, "--plugins", &manifest()],
        &[("ACTIVITY_TIMEOUT", "soon"), ("DEBUG", "maybe")],
    );
    assert_eq!(code, Some(1), "{out}");
    for line in [
        "configuration: ACTIVITY_TIMEOUT: expected a whole number, found \"soon\"",
        "configuration: DEBUG: expected true or false, found \"maybe\"",
        &format!("configuration: {config}: bogus: unknown field"),
        &format!("configuration: {config}: port: invalid type: string \"high\""),
        &format!("configuration: {config}: event_limits.max_batch: unknown field"),
        &format!("configuration: {config}: adapter.redis_url: unknown field"),
        "configuration: presence.max_members_per_channel: must be at least 1",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[test]
fn duplicate_apps_and_unknown_drivers_are_refused() {
    let dir = private_dir();
    let config = write(
        dir.path(),
        "sockhost.toml",
        "[[app_manager.array.apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n\
         [[app_manager.array.apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"\"\n\
         [[app_manager.array.apps]]\nid = \"a:idempotency\"\nkey = \"k3\"\nsecret = \"s\"\n",
    );
    let (code, out) =
        run_to_exit(dir.path(), &["--config", &config, "--plugins", &manifest()], &[]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("app_manager.array.apps[1].id: duplicate id \"a\" (also apps[0])"),
        "{out}"
    );
    assert!(
        out.contains("app_manager.array.apps[1].key: duplicate key \"k\" (also apps[0])"),
        "{out}"
    );
    assert!(out.contains("app_manager.array.apps[1].secret: must not be empty"), "{out}");
    // An id with `:` could name another app's keys in the shared cache and rate limiter.
    assert!(out.contains("app_manager.array.apps[2].id: must not contain `:`"), "{out}");

    // An app's recovery overrides: zero is refused (an app turns recovery off with
    // `enabled = false`), and so is a failure policy that does not exist.
    let config = write(
        dir.path(),
        "overrides.toml",
        "[[app_manager.array.apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n\
         connection_recovery = { max_buffer_size = 0 }\n\
         [[app_manager.array.apps]]\nid = \"b\"\nkey = \"k2\"\nsecret = \"s\"\n\
         history = { on_store_failure = \"shrug\" }\n",
    );
    let (code, out) =
        run_to_exit(dir.path(), &["--config", &config, "--plugins", &manifest()], &[]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains(
            "app_manager.array.apps[0].connection_recovery.max_buffer_size: must be at least 1"
        ),
        "{out}"
    );
    assert!(out.contains("unknown variant `shrug`, expected `reject` or `best_effort`"), "{out}");

    // In a directory without a config file: the defaults, with the cache driver from the
    // environment.
    let empty = private_dir();
    let port = free_port().to_string();
    let (code, out) = run_to_exit(
        empty.path(),
        &["--plugins", &manifest(), "--port", &port],
        &[("CACHE_DRIVER", "memcached"), ("METRICS_ENABLED", "false")],
    );
    assert_eq!(code, Some(1));
    assert!(
        out.contains("no loaded plugin provides the cache driver `memcached` (available: memory, none, redis, redis-cluster); loaded plugins: local 0.1.0"),
        "{out}"
    );
}

/// Idempotent publish (on by default) claims each key with the rate limiter and keeps its
/// answer in the cache: over `none` (how rate limits are turned off) the server starts, and
/// says at start that keyed retries may be published again.
#[tokio::test]
async fn idempotency_over_drivers_that_keep_nothing_is_told_at_start() {
    let server =
        Server::builder().env("CACHE_DRIVER", "none").env("RATE_LIMITER_DRIVER", "none").start();
    started(&server.ws_url(&TestApp::main().key), "the server").await;
    let log = server.log();
    for kind in ["cache", "rate_limiter"] {
        let line = format!("Idempotent publish is on with the `none` {kind}, which keeps nothing");
        assert!(log.contains(&line), "missing {line:?} in:\n{log}");
    }
}

#[tokio::test]
async fn environment_overrides_the_file_and_flags_override_the_environment() {
    // The harness sets PORT in the environment; the file's port must lose to it.
    let server = Server::builder().config("port = 1\n").start();
    let app = TestApp::main();
    Client::connect(&server.ws_url(&app.key)).await;
}

#[tokio::test]
async fn a_json_config_in_the_reference_shape_is_accepted() {
    let dir = private_dir();
    let port = free_port();
    let config = json!({
        "host": "127.0.0.1",
        "port": port,
        "activity_timeout": 60,
        "metrics": { "enabled": false },
        "adapter": { "driver": "local" },
        "app_manager": { "driver": "memory", "array": { "apps": [
            { "id": "json-app", "key": "json-key", "secret": "json-secret", "enable_client_messages": true }
        ]}}
    });
    let path = write(dir.path(), "config.json", &config.to_string());
    let mut child = std::process::Command::new(sockhost_tests::sockhost_bin())
        .args(["--config", &path, "--plugins", &manifest()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("ws://127.0.0.1:{port}/app/json-key?protocol=7");
    started(&url, "the server starts").await;
    let mut client = Client::connect(&url).await;
    let established = Client::connect_raw(&url).await.expect("pusher:connection_established").await;
    assert!(established["data"].as_str().unwrap().contains("\"activity_timeout\":60"));
    client.send(json!({ "event": "pusher:ping" })).await;
    client.expect("pusher:pong").await;
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn with_no_app_configured_the_default_app_comes_from_the_environment() {
    let dir = private_dir();
    let port = free_port();
    let mut child = std::process::Command::new(sockhost_tests::sockhost_bin())
        .args(["--plugins", &manifest(), "--host", "127.0.0.1", "--port", &port.to_string()])
        .current_dir(dir.path())
        .env("METRICS_ENABLED", "false")
        .env("SOCKUDO_DEFAULT_APP_ID", "env-app")
        .env("SOCKUDO_DEFAULT_APP_KEY", "env-key")
        .env("SOCKUDO_DEFAULT_APP_SECRET", "env-secret")
        .env("PORT", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("ws://127.0.0.1:{port}/app/env-key?protocol=7");
    started(&url, "the server starts on the --port flag").await;
    let app = TestApp::new("env-app", "env-key", "env-secret");
    let mut client = Client::connect(&url).await;
    client.subscribe(&app, "private-env").await;
    let api = Api::new(&format!("http://127.0.0.1:{port}"), &app);
    assert_eq!(api.trigger(&["private-env"], "e", "d").await.0, 200);
    client.expect("e").await;
    let _ = child.kill();
    let _ = child.wait();
}
