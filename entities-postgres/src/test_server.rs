//! A private, throwaway PostgreSQL server for tests and benchmarks (feature `test-server`).
//!
//! [`TestServer::start`] runs `initdb` into a temporary directory and `pg_ctl start` on a free
//! port of 127.0.0.1 with trust authentication; dropping it stops the server and removes the
//! directory. PostgreSQL refuses to run as root: as root, the server runs as the `postgres`
//! system user. With `ENTITIES_POSTGRES_URL` set, no server is started and databases are
//! created on that server instead. [`TestServer::start_with`] always starts a private server,
//! with [`ServerOptions`] (TLS with given certificate and key, or none).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why no server could be had.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(String);

/// Options of [`TestServer::start_with`].
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    tls: Option<(String, String)>,
}

impl ServerOptions {
    /// Options of a server without TLS (`ssl=off`).
    pub fn new() -> Self {
        Self::default()
    }

    /// `ssl=on` with this certificate (chain) and private key, both PEM. The server keeps its
    /// copies of them, owned by the server's user, the key readable by it alone.
    pub fn tls(mut self, cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        self.tls = Some((cert_pem.into(), key_pem.into()));
        self
    }
}

/// A running private server (or the server of `ENTITIES_POSTGRES_URL`).
#[derive(Debug)]
pub struct TestServer {
    /// `postgres://user@host:port` without a database.
    base: String,
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    as_postgres: bool,
}

fn find_bin() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl TestServer {
    /// Starts a server (or uses `ENTITIES_POSTGRES_URL`).
    pub fn start() -> Result<Self, Unavailable> {
        if let Ok(url) = std::env::var("ENTITIES_POSTGRES_URL") {
            let base = url
                .rsplit_once('/')
                .map_or(url.clone(), |(b, _)| b.to_string());
            return Ok(Self {
                base,
                dir: None,
                bin: PathBuf::new(),
                as_postgres: false,
            });
        }
        Self::start_with(ServerOptions::new())
    }

    /// Starts a private server with `options` (whether or not `ENTITIES_POSTGRES_URL` is set).
    pub fn start_with(options: ServerOptions) -> Result<Self, Unavailable> {
        let bin = find_bin().ok_or_else(|| {
            Unavailable("no PostgreSQL server binaries (initdb) found; install the Debian package `postgresql` or set ENTITIES_POSTGRES_URL".into())
        })?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("entities-pg-")
            .tempdir()
            .map_err(|e| Unavailable(format!("cannot create a directory: {e}")))?;
        let data = dir.path().join("data");
        if as_postgres {
            run(Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path()))?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Unavailable(format!("no free port: {e}")))?
            .port();
        let server = Self {
            base: format!("postgres://postgres@127.0.0.1:{port}"),
            dir: Some(dir),
            bin,
            as_postgres,
        };
        run(server
            .pg("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data))?;
        let mut settings = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c max_connections=300 -c fsync=on -c synchronous_commit=on",
            server.socket_dir().display()
        );
        if let Some((cert, key)) = &options.tls {
            let cert_file = server.socket_dir().join("server.crt");
            let key_file = server.socket_dir().join("server.key");
            server.write_private(&cert_file, cert, 0o644)?;
            server.write_private(&key_file, key, 0o600)?;
            settings.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert_file.display(),
                key_file.display()
            ));
        } else {
            settings.push_str(" -c ssl=off");
        }
        run(server
            .pg("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(server.socket_dir().join("log"))
            .args(["-o", &settings]))?;
        Ok(server)
    }

    /// Writes `contents` to `path` with `mode`, owned by the server's user.
    fn write_private(&self, path: &Path, contents: &str, mode: u32) -> Result<(), Unavailable> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let failed = |e| Unavailable(format!("cannot write {}: {e}", path.display()));
        // Created with its mode: a key is never readable by others, not even for a moment.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut file| file.write_all(contents.as_bytes()))
            .map_err(failed)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(failed)?;
        if self.as_postgres {
            run(Command::new("chown").args(["postgres:postgres"]).arg(path))?;
        }
        Ok(())
    }

    /// Starts a server, or returns `None` after printing one line saying why the caller
    /// skips; with `ENTITIES_REQUIRE_ALL_TESTS=1` a missing server panics instead.
    pub fn start_or_skip(what: &str) -> Option<Self> {
        Self::skip_unless(what, Self::start())
    }

    /// [`start_with`](Self::start_with) `options`, or `None` after one line saying why the
    /// caller skips, as [`start_or_skip`](Self::start_or_skip).
    pub fn start_with_or_skip(what: &str, options: ServerOptions) -> Option<Self> {
        Self::skip_unless(what, Self::start_with(options))
    }

    fn skip_unless(what: &str, started: Result<Self, Unavailable>) -> Option<Self> {
        match started {
            Ok(server) => Some(server),
            Err(err) => {
                if std::env::var("ENTITIES_REQUIRE_ALL_TESTS").is_ok_and(|v| v == "1") {
                    panic!("{what}: PostgreSQL is required (ENTITIES_REQUIRE_ALL_TESTS=1): {err}");
                }
                eprintln!("SKIPPED {what}: {err}");
                None
            }
        }
    }

    fn socket_dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/tmp"), |d| d.path())
    }

    fn pg(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// Creates a new empty database and returns its URL.
    pub async fn create_database(&self) -> Result<String, Unavailable> {
        let name = format!("entities_{}", uuid_like());
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .map_err(|e| Unavailable(format!("cannot connect to the test server: {e}")))?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| Unavailable(format!("cannot create a database: {e}")))?;
        Ok(self.url(&name))
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn run(command: &mut Command) -> Result<(), Unavailable> {
    let out = command
        .output()
        .map_err(|e| Unavailable(format!("cannot run {command:?}: {e}")))?;
    if !out.status.success() {
        return Err(Unavailable(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = self
                .pg("pg_ctl")
                .args(["stop", "-m", "immediate", "-w", "-D"])
                .arg(dir.path().join("data"))
                .output();
        }
    }
}

/// Faults of the server itself, for tests of outages.
impl TestServer {
    fn data_dir(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().join("data"))
    }

    /// Restarts the server (`pg_ctl restart -m fast`: sessions are ended, the server is down
    /// for a moment). Does nothing on a server given by `ENTITIES_POSTGRES_URL`.
    pub fn restart(&self) -> Result<(), Unavailable> {
        let Some(data) = self.data_dir() else {
            return Ok(());
        };
        run(self
            .pg("pg_ctl")
            .args(["restart", "-m", "fast", "-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(self.socket_dir().join("log")))
    }

    /// Stops the server (`pg_ctl stop -m fast`) until [`TestServer::start_again`].
    pub fn stop(&self) -> Result<(), Unavailable> {
        let Some(data) = self.data_dir() else {
            return Ok(());
        };
        let opts = std::fs::read_to_string(data.join("postmaster.opts"))
            .map_err(|e| Unavailable(format!("cannot read postmaster.opts: {e}")))?;
        std::fs::write(self.socket_dir().join("opts"), opts)
            .map_err(|e| Unavailable(format!("cannot keep the server's options: {e}")))?;
        run(self
            .pg("pg_ctl")
            .args(["stop", "-m", "fast", "-w", "-t", "60", "-D"])
            .arg(&data))
    }

    /// Starts a server stopped by [`TestServer::stop`] again, with the options it had.
    pub fn start_again(&self) -> Result<(), Unavailable> {
        let Some(data) = self.data_dir() else {
            return Ok(());
        };
        let opts = std::fs::read_to_string(self.socket_dir().join("opts"))
            .map_err(|e| Unavailable(format!("cannot read the server's options: {e}")))?;
        // postmaster.opts: the binary, then its quoted arguments; `-D` is given here.
        let args: Vec<String> = opts
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        let mut options = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "-D" {
                args.next();
            } else {
                options.push(arg);
            }
        }
        run(self
            .pg("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(self.socket_dir().join("log"))
            .args(["-o", &options.join(" ")]))
    }

    /// Freezes (`true`, SIGSTOP) or thaws (`false`, SIGCONT) every process of the server, as
    /// a stalled database host would.
    pub fn freeze(&self, frozen: bool) -> Result<(), Unavailable> {
        let Some(data) = self.data_dir() else {
            return Ok(());
        };
        let pid = std::fs::read_to_string(data.join("postmaster.pid"))
            .map_err(|e| Unavailable(format!("cannot read postmaster.pid: {e}")))?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        // The postmaster first (it forks no backend while stopped), then its children; one
        // that exited meanwhile is no error.
        run(Command::new("kill").args([signal, &pid]))?;
        let children = Command::new("pgrep")
            .args(["-P", &pid])
            .output()
            .map_err(|e| Unavailable(format!("cannot run pgrep: {e}")))?;
        for child in String::from_utf8_lossy(&children.stdout).split_whitespace() {
            let _ = Command::new("kill").args([signal, child]).output();
        }
        Ok(())
    }
}
