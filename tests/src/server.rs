//! Running the real `sockhost` binary for a test.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

pub use crate::daemon::free_port;
use crate::{daemon::poll, private_dir, sockhost_bin};

/// The apps every test server has: one for each limit profile the tests need.
pub const APPS: &str = r#"
[[app_manager.array.apps]]
id = "app-1"
key = "key-1"
secret = "secret-1"
enable_client_messages = true

[[app_manager.array.apps]]
id = "limited"
key = "limited-key"
secret = "limited-secret"
enable_client_messages = true
max_connections = 2
max_presence_members_per_channel = 2
max_presence_member_size_in_kb = 1
max_client_events_per_second = 3
max_event_payload_in_kb = 1
max_event_batch_size = 2
max_event_channels_at_once = 2
max_event_name_length = 20
max_channel_name_length = 30

[[app_manager.array.apps]]
id = "small"
key = "small-key"
secret = "small-secret"
max_presence_members_per_channel = 2
max_presence_member_size_in_kb = 1

[[app_manager.array.apps]]
id = "disabled"
key = "disabled-key"
secret = "disabled-secret"
enabled = false

[[app_manager.array.apps]]
id = "quiet"
key = "quiet-key"
secret = "quiet-secret"

[[app_manager.array.apps]]
id = "best-effort"
key = "best-effort-key"
secret = "best-effort-secret"
connection_recovery = { max_buffer_size = 3 }
history = { on_store_failure = "best_effort" }

[[app_manager.array.apps]]
id = "recovering"
key = "recovering-key"
secret = "recovering-secret"
v1_recovery_fields = true

[[app_manager.array.apps]]
id = "unrecovered"
key = "unrecovered-key"
secret = "unrecovered-secret"
connection_recovery = { enabled = false }
"#;

/// A running `sockhost` process, killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// The WebSocket and HTTP API port.
    pub port: u16,
    /// The metrics port.
    pub metrics_port: u16,
    /// Where its config and log live.
    pub dir: tempfile::TempDir,
    tls: bool,
    proxy_protocol: bool,
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    config: String,
    env: Vec<(String, String)>,
    manifest: Option<PathBuf>,
    open_files: Option<u32>,
    exec: Option<Vec<String>>,
    tls: bool,
    proxy_protocol: bool,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            config: APPS.to_string(),
            env: Vec::new(),
            manifest: None,
            open_files: None,
            exec: None,
            tls: false,
            proxy_protocol: false,
        }
    }
}

impl ServerBuilder {
    /// Add TOML to the config file (top-level keys first: it is prepended).
    #[must_use]
    pub fn config(mut self, toml: &str) -> Self {
        self.config = format!("{toml}\n{}", self.config);
        self
    }

    /// Load the plugins `path` lists instead of the repository's `plugins.toml`.
    #[must_use]
    pub fn manifest(mut self, path: &Path) -> Self {
        self.manifest = Some(path.to_path_buf());
        self
    }

    /// Use the configuration in `path` exactly as it is (no test apps added).
    ///
    /// # Panics
    /// If it cannot be read.
    #[must_use]
    pub fn config_file(mut self, path: &Path) -> Self {
        self.config = std::fs::read_to_string(path).expect("the config file reads");
        self
    }

    /// Serve TLS with the certificate and key at these paths (`SSL_*`); the server counts as up
    /// once its port accepts connections.
    #[must_use]
    pub fn tls(mut self, cert: &Path, key: &Path) -> Self {
        self.tls = true;
        self.env("SSL_ENABLED", "true")
            .env("SSL_CERT_PATH", cert.to_str().unwrap())
            .env("SSL_KEY_PATH", key.to_str().unwrap())
    }

    /// Expect a PROXY protocol header on every connection to the main port
    /// (`EDGE_PROXY_PROTOCOL`); the harness's own checks send `PROXY UNKNOWN`.
    #[must_use]
    pub fn proxy_protocol(mut self) -> Self {
        self.proxy_protocol = true;
        self.env("EDGE_PROXY_PROTOCOL", "true")
    }

    /// Start the server with this command line instead of the built binary with `--config` and
    /// `--plugins` (as a service manager would); `{config}` in it is replaced with the path of
    /// the config file written for it.
    #[must_use]
    pub fn exec(mut self, argv: Vec<String>) -> Self {
        self.exec = Some(argv);
        self
    }

    /// Run the server with at most `n` open files (through `prlimit`, which then runs it).
    #[must_use]
    pub fn open_files(mut self, n: u32) -> Self {
        self.open_files = Some(n);
        self
    }

    /// Set an environment variable.
    #[must_use]
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Start it and wait until `/up` answers.
    ///
    /// # Panics
    /// If it does not start, or exits, within the deadline.
    pub fn start(self) -> Server {
        let dir = private_dir();
        let config = dir.path().join("sockhost.toml");
        std::fs::write(&config, &self.config).unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let manifest =
            self.manifest.unwrap_or_else(|| crate::workspace_root().join("plugins.toml"));
        let mut command = match (&self.exec, self.open_files) {
            (Some(argv), _) => {
                let argv: Vec<String> =
                    argv.iter().map(|a| a.replace("{config}", config.to_str().unwrap())).collect();
                let mut command = Command::new(&argv[0]);
                command.args(&argv[1..]);
                command
            }
            (None, None) => Command::new(sockhost_bin()),
            (None, Some(n)) => {
                let mut prlimit = Command::new("prlimit");
                prlimit.arg(format!("--nofile={n}:{n}")).arg("--").arg(sockhost_bin());
                prlimit
            }
        };
        if self.exec.is_none() {
            command.args([
                "--config",
                config.to_str().unwrap(),
                "--plugins",
                manifest.to_str().unwrap(),
            ]);
        }
        // Port 0: the server binds free ports itself and logs them, so no two servers of
        // concurrent tests can race for one.
        command
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("METRICS_PORT", "0")
            .env("METRICS_HOST", "127.0.0.1")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", std::env::var("SOCKHOST_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log);
        for (name, value) in &self.env {
            command.env(name, value);
        }
        let child = command.spawn().expect("sockhost starts");
        let mut server = Server {
            child: Some(child),
            port: 0,
            metrics_port: 0,
            dir,
            tls: self.tls,
            proxy_protocol: self.proxy_protocol,
        };
        server.wait_until_up();
        server
    }
}

/// Whether the server closed `stream` (EOF or reset) within [`PATIENCE`](crate::pusher::PATIENCE),
/// reading and dropping whatever it sent before.
pub async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + crate::pusher::PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The port in the last `addr=...:<port>` of the first log line containing `marker`.
fn logged_port(log: &str, marker: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let after = &line[line.rfind("127.0.0.1:")? + "127.0.0.1:".len()..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl Server {
    /// A server with the test apps and default settings.
    pub fn start() -> Self {
        ServerBuilder::default().start()
    }

    /// Configure a server before starting it.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// `ws://127.0.0.1:<port>/app/<key>?protocol=7...`.
    pub fn ws_url(&self, key: &str) -> String {
        format!("ws://127.0.0.1:{}/app/{key}?protocol=7&client=test&version=1.0", self.port)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn wait_until_up(&mut self) {
        if let Err(seen) = poll(Duration::from_secs(20), || self.up(), || false) {
            panic!("sockhost {seen} in time:\n{}", self.log());
        }
    }

    /// Whether it answers `/up` yet (once it has logged its ports); what it lacks if not.
    fn up(&mut self) -> Result<(), String> {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("sockhost exited with {status} before answering:\n{}", self.log());
        }
        if self.port == 0 {
            let log = self.log();
            match (logged_port(&log, "Listening."), logged_port(&log, "Metrics listening.")) {
                (Some(port), Some(metrics)) => (self.port, self.metrics_port) = (port, metrics),
                _ => return Err("logged no address".into()),
            }
        }
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            use std::io::{Read, Write};
            if self.tls {
                return Ok(());
            }
            if self.proxy_protocol {
                let _ = stream.write_all(b"PROXY UNKNOWN\r\n");
            }
            let _ = stream.write_all(b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        Err("did not answer /up".into())
    }

    /// Send SIGTERM and wait for the exit status.
    ///
    /// # Panics
    /// If it does not exit within 30 s.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let exited = || child.try_wait().unwrap().ok_or_else(|| "still running".to_string());
        poll(Duration::from_secs(30), exited, || false)
            .unwrap_or_else(|_| panic!("sockhost did not exit after SIGTERM"))
    }

    /// The metrics exposition.
    ///
    /// # Panics
    /// If the metrics endpoint does not answer.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of a metric without labels (0 if absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Wait until metric `name` satisfies `check`.
    ///
    /// # Panics
    /// If it does not within the deadline.
    pub async fn wait_for_metric(&self, name: &str, check: impl Fn(f64) -> bool) {
        self.wait_for(name, false, crate::pusher::PATIENCE, check).await;
    }

    /// Wait up to `within` until the metric line starting with `prefix` (a name with its
    /// labels) satisfies `check`.
    ///
    /// # Panics
    /// If it does not within the deadline.
    pub async fn wait_for_labelled_metric(
        &self,
        prefix: &str,
        within: Duration,
        check: impl Fn(f64) -> bool,
    ) {
        self.wait_for(prefix, true, within, check).await;
    }

    async fn wait_for(
        &self,
        name: &str,
        labelled: bool,
        within: Duration,
        check: impl Fn(f64) -> bool,
    ) {
        crate::wait::eventually_within(format!("{name} as expected"), within, async || {
            let value =
                if labelled { self.labelled_metric(name).await } else { self.metric(name).await };
            crate::wait::holds(check(value), format_args!("{value}, with the log:\n{}", self.log()))
        })
        .await;
    }

    /// The value of a metric line that starts with `prefix` (a name with its labels).
    pub async fn labelled_metric(&self, prefix: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Its resident memory, in bytes.
    ///
    /// # Panics
    /// If the process is gone.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap();
        kb * 1024
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Freeze it with SIGSTOP, and return once every one of its threads has stopped.
    ///
    /// `kill` returns before that: the kernel wakes one thread to take the stop, and that
    /// thread stops the others. On a loaded machine the rest run on meanwhile, so a node
    /// "stopped" this way could still answer a request sent right after.
    ///
    /// # Panics
    /// If the process is gone, or some thread has not stopped within 10 s.
    pub fn pause(&self) {
        self.signal("-STOP");
        let pid = self.pid();
        let stopped = || {
            let tasks =
                std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
            for task in tasks {
                let stat =
                    std::fs::read_to_string(task.map_err(|e| e.to_string())?.path().join("stat"))
                        .map_err(|e| e.to_string())?;
                // The state follows the parenthesised name, which may itself hold ") ".
                let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
                if !matches!(state, Some('T' | 't')) {
                    return Err(format!("a thread is in state {state:?}"));
                }
            }
            Ok(())
        };
        poll(Duration::from_secs(10), stopped, || false)
            .unwrap_or_else(|seen| panic!("sockhost did not stop: {seen}"));
    }

    /// Let it run again after [`Server::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let status = Command::new("kill").args([which, &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill {which} failed");
    }

    /// Kill it with SIGKILL: no goodbye, no cleanup.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The config file's path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sockhost.toml")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Start the binary with `args` and `env` and wait for it to exit; (status, stderr).
///
/// # Panics
/// If it does not exit within 20 s.
pub fn run_to_exit(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(sockhost_bin());
    command
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}
