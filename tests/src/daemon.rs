//! One way to run a backing server in tests: [`Daemon`] starts a program on free loopback ports
//! in its own temp dir, waits until it answers, kills it, restarts it on the same ports, and
//! kills it when dropped; whatever fails panics with the program's log. [`poll`] is the
//! harness's one deadline loop (synchronous: servers start outside any runtime).

use std::{
    fs::OpenOptions,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A free loopback port: bound, read, released. The server binds it right after.
///
/// # Panics
/// If no port can be bound.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// How often [`poll`] looks again.
const POLL: Duration = Duration::from_millis(20);
/// How long a server may take to answer after it was started.
const STARTUP: Duration = Duration::from_secs(30);
/// Ports tried in turn when a concurrent test took one between [`free_port`] and the bind.
const ATTEMPTS: usize = 5;

type Launch = Box<dyn FnMut(&Path, &[u16]) -> Command + Send + Sync>;
type Answers = Box<dyn Fn(&[u16]) -> bool + Send + Sync>;
type Stop = Box<dyn FnMut(&Path) + Send + Sync>;

/// Look with `check` every few milliseconds until it answers `Ok`; its value. `Err` with the
/// last observation when `within` has passed or `gone` says waiting is pointless (the process
/// exited).
///
/// # Errors
/// As said: the last thing `check` saw.
pub fn poll<T>(
    within: Duration,
    mut check: impl FnMut() -> Result<T, String>,
    mut gone: impl FnMut() -> bool,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        let seen = match check() {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        if gone() || Instant::now() > deadline {
            return Err(seen);
        }
        std::thread::sleep(POLL);
    }
}

/// Whether something listens on 127.0.0.1:`port` and, after `send`, answers starting with
/// `expect`.
pub fn tcp_answers(port: u16, send: &[u8], expect: &[u8]) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(send).is_err() {
        return false;
    }
    let mut answer = vec![0u8; expect.len()];
    stream.read_exact(&mut answer).is_ok() && answer == expect
}

/// `env`'s program if set, else `name` from the `PATH`.
pub fn binary(name: &str, env: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| name.to_string())
}

/// A server process of a test's own. Built with [`Daemon::new`] and the builder methods, then
/// [`Daemon::start`]ed.
pub struct Daemon {
    name: &'static str,
    hint: &'static str,
    dir: tempfile::TempDir,
    log: PathBuf,
    ports: Vec<u16>,
    launch: Launch,
    answers: Answers,
    stop: Option<Stop>,
    child: Option<Child>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("name", &self.name)
            .field("ports", &self.ports)
            .field("dir", &self.dir.path())
            .field("running", &self.child.is_some())
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// `name` (for messages), living in `dir`, its stdout and stderr appended to the log file
    /// `log` there (where it may write itself too); launched by `launch` (given the dir and the
    /// ports) on one port, until told otherwise.
    pub fn new(
        name: &'static str,
        dir: tempfile::TempDir,
        log: &str,
        launch: impl FnMut(&Path, &[u16]) -> Command + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            hint: "is it installed?",
            log: dir.path().join(log),
            dir,
            ports: vec![0],
            launch: Box::new(launch),
            answers: Box::new(|_| true),
            stop: None,
            child: None,
        }
    }

    /// It needs `count` free ports (a cluster node: its clients' and its bus's).
    #[must_use]
    pub fn ports(mut self, count: usize) -> Self {
        self.ports = vec![0; count];
        self
    }

    /// Whether it answers yet, on its ports.
    #[must_use]
    pub fn answers(mut self, answers: impl Fn(&[u16]) -> bool + Send + Sync + 'static) -> Self {
        self.answers = Box::new(answers);
        self
    }

    /// How to stop it at once, given its dir, where SIGKILL to the process started is not that
    /// (it waits for the process after).
    #[must_use]
    pub fn stop(mut self, stop: impl FnMut(&Path) + Send + Sync + 'static) -> Self {
        self.stop = Some(Box::new(stop));
        self
    }

    /// What to install when the program is missing, for the panic message.
    #[must_use]
    pub fn hint(mut self, hint: &'static str) -> Self {
        self.hint = hint;
        self
    }

    /// Start on free ports and wait until it answers, on other ports if it exits at once (a
    /// concurrent test took one).
    ///
    /// # Panics
    /// If the program is missing or never answers: with its log.
    #[must_use]
    pub fn start(mut self) -> Self {
        for _ in 0..ATTEMPTS {
            self.ports = self.ports.iter().map(|_| free_port()).collect();
            if self.launch() {
                return self;
            }
        }
        panic!("{} would not start ({}):\n{}", self.name, self.hint, self.log());
    }

    /// Start it and wait until it answers; whether it did (if not, it is killed).
    fn launch(&mut self) -> bool {
        // Appended to, never truncated: a restart keeps what came before (and programs that
        // write the same file themselves append too).
        let log = || {
            let file = OpenOptions::new().create(true).append(true).open(&self.log);
            Stdio::from(file.expect("the log file opens"))
        };
        let (stdout, stderr) = (log(), log());
        let child = (self.launch)(self.dir.path(), &self.ports)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not run ({}): {e}", self.name, self.hint));
        self.child = Some(child);
        let (answers, ports, child) = (&self.answers, &self.ports, &mut self.child);
        let exited = || child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some());
        let up = poll(STARTUP, || crate::wait::holds(answers(ports), "no answer"), exited);
        if up.is_err() {
            self.kill();
        }
        up.is_ok()
    }

    /// Its first port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    /// Its temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it was started and not killed since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stop it at once (SIGKILL, or its own way to stop at once) and wait for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(stop) = &mut self.stop {
                stop(self.dir.path());
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill it and start it again on the same ports.
    ///
    /// # Panics
    /// If it does not answer again: with its log.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.launch(),
            "{} did not come back on {:?}:\n{}",
            self.name,
            self.ports,
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_never_answers_fails_with_its_log() {
        let failed = std::panic::catch_unwind(|| {
            Daemon::new("broken", crate::private_dir(), "broken.log", |_, ports| {
                let mut command = Command::new("sh");
                command.args(["-c", &format!("echo cannot bind {} >&2; exit 1", ports[0])]);
                command
            })
            .answers(|_| false)
            .start()
        });
        let message = *failed.expect_err("it panics").downcast::<String>().unwrap();
        assert!(message.starts_with("broken would not start"), "{message}");
        assert_eq!(message.matches("cannot bind").count(), ATTEMPTS, "{message}");
    }

    #[test]
    fn a_server_restarts_on_its_port_and_stops_when_dropped() {
        let dir = crate::private_dir();
        let log = dir.path().join("sleeper.log");
        let mut daemon = Daemon::new("sleeper", dir, "sleeper.log", |_, ports| {
            let mut command = Command::new("sh");
            command.args(["-c", &format!("echo on {}; exec sleep 60", ports[0])]);
            command
        })
        .answers(move |ports| {
            std::fs::read_to_string(&log)
                .is_ok_and(|text| text.contains(&format!("on {}", ports[0])))
        })
        .start();
        let port = daemon.port();
        daemon.restart();
        assert_eq!(daemon.port(), port);
        let started = format!("on {port}");
        let twice =
            || crate::wait::holds(daemon.log().matches(&started).count() == 2, daemon.log());
        poll(Duration::from_secs(10), twice, || false).expect("both starts logged");
        daemon.kill();
        assert!(!daemon.is_running());
    }
}
