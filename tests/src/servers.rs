//! Private broker servers on free ports, for tests that stop and restart a broker without disturbing the
//! machine's shared one.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free port")
}

/// Waits until something accepts connections on `port`, failing the test after 5 s.
pub async fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on port {port}");
}

/// A broker that can be stopped (SIGKILL: no goodbye to its clients) and started again on the same port and
/// storage. Killed when dropped.
pub struct Server {
    command: Box<dyn Fn() -> Command + Send + Sync>,
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Server {
    /// NATS with JetStream, storing streams in a directory of its own.
    pub async fn nats() -> Self {
        Self::start("nats", |port, dir| {
            let mut command = Command::new("nats-server");
            command
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir);
            command
        })
        .await
    }

    /// Redis without persistence: a restart empties it.
    pub async fn redis() -> Self {
        Self::start("redis", |port, _| redis_server(port, false)).await
    }

    /// Redis with an append-only file in its own directory, written before each reply: what it acknowledged
    /// survives a kill.
    pub async fn redis_persistent() -> Self {
        Self::start("redis", |port, dir| {
            let mut command = redis_server(port, true);
            command.arg("--dir").arg(dir);
            command
        })
        .await
    }

    /// A Redis replica of the server on `primary`: it takes no writes (`READONLY`) until `REPLICAOF NO ONE`.
    pub async fn redis_replica(primary: u16) -> Self {
        Self::start("redis", move |port, _| {
            let mut command = redis_server(port, false);
            command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
            command
        })
        .await
    }

    /// tansu (Kafka) on SQLite storage, so topics and records survive a restart. (Its in-memory engine forgets
    /// everything.) The storage path is relative to the working directory: the server's own directory.
    pub async fn tansu() -> Self {
        Self::start("tansu", |port, dir| {
            let listener = format!("tcp://127.0.0.1:{port}");
            let mut command = Command::new("tansu");
            command
                .current_dir(dir)
                .args(["broker", "--storage-engine", "sqlite://tansu.db"])
                .args(["--listener-url", &listener])
                .args(["--advertised-listener-url", &listener]);
            command
        })
        .await
    }

    async fn start(
        name: &str,
        command: impl Fn(u16, &Path) -> Command + Send + Sync + 'static,
    ) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("outbox-{name}-{port}"));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let command_dir = dir.clone();
        let mut server = Self {
            command: Box::new(move || command(port, &command_dir)),
            child: None,
            port,
            dir,
        };
        server.restart().await;
        server
    }

    /// Kills the server abruptly: its clients see their connections drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again (after [`stop`](Self::stop)) and waits for its port.
    pub async fn restart(&mut self) {
        self.stop();
        let mut command = (self.command)();
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} ({e}); .ci/run installs it"));
        self.child = Some(child);
        wait_for_port(self.port).await;
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// `redis-server` on `port`, without snapshots, and with an append-only file (written before each reply) if
/// `append_only`.
fn redis_server(port: u16, append_only: bool) -> Command {
    let mut command = Command::new("redis-server");
    command.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        if append_only { "yes" } else { "no" },
    ]);
    command
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
