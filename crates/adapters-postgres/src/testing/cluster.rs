//! A throwaway PostgreSQL cluster from the machine's binaries: a temp dir, a free port on
//! 127.0.0.1, `initdb` and `pg_ctl` run as the `postgres` user when the tests run as root.
//! A watchdog process stops the server and deletes the directory once the test process is
//! gone, however it ends; a dedicated cluster is also stopped when dropped.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What to do when no server can be had.
pub(crate) const HOW_TO_GET_ONE: &str =
    "install postgresql (apt-get install -y postgresql) or set DATABASE_URL=postgres://…";

/// Server settings for tests: fast and disposable (no fsync), roomy enough for pools.
const SERVER_OPTIONS: &str =
    "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
     -c max_connections=200 -c shared_buffers=32MB";
/// What a durable cluster changes: a commit is in the WAL on disk before it is acknowledged, so
/// a crash of the server (not of the machine: fsync stays off) loses no acknowledged commit.
const DURABLE_OPTIONS: &str = "-c synchronous_commit=on";

/// Attempts at finding a free port (another process may take the one we picked).
const START_ATTEMPTS: usize = 3;

/// A PostgreSQL server this process started.
#[derive(Debug)]
pub struct TestCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    /// Whether dropping this value stops the server (the shared cluster lives until exit).
    owned: bool,
    /// Whether acknowledged commits survive a crash of the server (`restart_immediate`).
    durable: bool,
}

impl TestCluster {
    /// Starts a new cluster that this value owns: stopped and deleted when it is dropped.
    /// Blocks for the second or two `initdb` and start-up take.
    ///
    /// # Panics
    /// When there are no PostgreSQL binaries or the server does not start; the message says why.
    pub fn start_dedicated() -> TestCluster {
        Self::create(true).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A dedicated cluster whose acknowledged commits survive `restart_immediate`, for tests
    /// that crash the server and then count what it kept (the fast settings would lose the
    /// last fraction of a second of commits, as they are allowed to).
    ///
    /// # Panics
    /// As `start_dedicated`.
    pub fn start_dedicated_durable() -> TestCluster {
        Self::create_with(true, true).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a cluster that lives until the test process exits.
    pub(crate) fn create(owned: bool) -> Result<TestCluster, String> {
        Self::create_with(owned, false)
    }

    fn create_with(owned: bool, durable: bool) -> Result<TestCluster, String> {
        let bin = find_binaries()
            .ok_or_else(|| format!("no PostgreSQL binaries (initdb, pg_ctl) found: {HOW_TO_GET_ONE}"))?;
        let as_postgres = nix::unistd::geteuid().is_root();
        let dir = tempfile::Builder::new()
            .prefix("rdev-pg-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir for PostgreSQL: {e}"))?
            .keep();
        let cluster = TestCluster { bin, dir, port: 0, as_postgres, owned, durable };
        cluster.spawn_watchdog()?;
        if as_postgres {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .ok_or_else(|| format!("running as root needs the `postgres` OS user: {HOW_TO_GET_ONE}"))?;
            std::os::unix::fs::chown(&cluster.dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(|e| format!("cannot hand {} to postgres: {e}", cluster.dir.display()))?;
        }
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &["-D", path_str(&data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "-N"],
        )?;
        cluster.first_start()
    }

    fn first_start(mut self) -> Result<TestCluster, String> {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            self.port = free_port()?;
            match self.start_server() {
                Ok(()) => return Ok(self),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` as the superuser `postgres`.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The URL of the maintenance database, for creating and dropping databases.
    pub fn admin_url(&self) -> String {
        self.url_for("postgres")
    }

    /// Stops the server (fast shutdown: sessions are ended, like a real outage). Blocks.
    ///
    /// # Panics
    /// When `pg_ctl stop` fails.
    pub fn stop(&self) {
        let data = self.data_dir();
        self.run("pg_ctl", &["-D", path_str(&data), "-m", "fast", "-w", "stop"]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts the stopped server again on the same port, with the same data. Blocks.
    ///
    /// # Panics
    /// When the server does not start.
    pub fn start(&self) {
        self.start_server().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Restarts the server at once, the way a crash does: `pg_ctl restart -m immediate` ends
    /// every session without a checkpoint, and the server recovers from its WAL on the same
    /// port. Blocks until it accepts connections again.
    ///
    /// # Errors
    /// When `pg_ctl` fails; the message carries the server log's tail.
    pub fn restart_immediate(&self) -> Result<(), String> {
        let data = self.data_dir();
        let log = self.dir.join("server.log");
        let options = format!("-p {} -k {} {}", self.port, path_str(&self.dir), self.server_options());
        let args = ["-D", path_str(&data), "-l", path_str(&log), "-m", "immediate", "-w", "-t", "60", "-o", &options];
        self.run("pg_ctl", &[&args[..], &["restart"]].concat()).map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            format!("{e}\nserver log:\n{}", tail.join("\n"))
        })
    }

    fn server_options(&self) -> String {
        if self.durable {
            format!("{SERVER_OPTIONS} {DURABLE_OPTIONS}")
        } else {
            SERVER_OPTIONS.to_owned()
        }
    }

    /// The cluster's data directory (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Restarts the server with TLS on, presenting `cert_pem` (with its chain) and `key_pem`.
    ///
    /// # Panics
    /// When the files cannot be written or the server does not come back.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) {
        self.write_tls_files(cert_pem, key_pem).unwrap_or_else(|e| panic!("{e}"));
        self.stop();
        self.start();
    }

    fn write_tls_files(&self, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data_dir();
        let io = |path: &Path, e: std::io::Error| format!("{}: {e}", path.display());
        for (name, pem) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, pem).map_err(|e| io(&path, e))?;
            // The server refuses a key others can read, or one it does not own.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| io(&path, e))?;
            if self.as_postgres {
                let user = nix::unistd::User::from_name("postgres")
                    .ok()
                    .flatten()
                    .ok_or_else(|| format!("no `postgres` OS user: {HOW_TO_GET_ONE}"))?;
                std::os::unix::fs::chown(&path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .map_err(|e| io(&path, e))?;
            }
        }
        let conf = data.join("postgresql.conf");
        let mut settings = std::fs::read_to_string(&conf).map_err(|e| io(&conf, e))?;
        settings.push_str("\nssl = on\n");
        std::fs::write(&conf, settings).map_err(|e| io(&conf, e))
    }

    fn start_server(&self) -> Result<(), String> {
        let data = self.data_dir();
        let log = self.dir.join("server.log");
        let options = format!("-p {} -k {} {}", self.port, path_str(&self.dir), self.server_options());
        let started = self
            .run("pg_ctl", &["-D", path_str(&data), "-l", path_str(&log), "-w", "-t", "60", "-o", &options, "start"]);
        started.map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            format!("{e}\nserver log:\n{}", tail.join("\n"))
        })
    }

    /// Runs one of the PostgreSQL programs, as `postgres` when we are root.
    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        // The server inherits nothing of ours: a test harness waiting on a pipe would hang.
        let output = command
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e} ({HOW_TO_GET_ONE})", exe.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} {} failed ({}):\n{}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// A detached shell that waits for this process to end, then stops the server and deletes
    /// the directory: statics are never dropped, and a killed test run must not leak servers.
    fn spawn_watchdog(&self) -> Result<(), String> {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = format!(
            "{}{} -D {} -m immediate stop",
            if self.as_postgres { "runuser -u postgres -- " } else { "" },
            shell_quote(path_str(&pg_ctl)),
            shell_quote(path_str(&self.data_dir())),
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; if [ -f {pid_file} ]; then {stop}; fi; rm -rf {dir}",
            pid = std::process::id(),
            pid_file = shell_quote(path_str(&self.data_dir().join("postmaster.pid"))),
            dir = shell_quote(path_str(&self.dir)),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so a Ctrl-C aimed at the test run does not stop the cleanup.
            .process_group(0)
            .spawn()
            .map(drop)
            .map_err(|e| format!("cannot start the cleanup watchdog: {e}"))
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let data = self.data_dir();
        if data.join("postmaster.pid").exists() {
            if let Err(e) = self.run("pg_ctl", &["-D", path_str(&data), "-m", "immediate", "-w", "stop"]) {
                tracing::warn!(error = %e, "stopping the test cluster");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(error = %e, dir = %self.dir.display(), "removing the test cluster");
        }
    }
}

/// The directory holding `initdb` and `pg_ctl`: on `PATH`, else the newest
/// `/usr/lib/postgresql/*/bin`. Symlinks are resolved, since `pg_ctl` finds `postgres` beside itself.
fn find_binaries() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|dir| std::fs::canonicalize(dir.join("pg_ctl")).ok())
        .filter_map(|pg_ctl| pg_ctl.parent().map(Path::to_path_buf));
    let mut packaged: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    packaged.sort_by_key(|dir| {
        let version = dir.parent().and_then(Path::file_name).and_then(|v| v.to_str()).and_then(|v| v.parse().ok());
        std::cmp::Reverse(version.unwrap_or(0_u32))
    });
    on_path.chain(packaged).find(|dir| ["initdb", "pg_ctl", "postgres"].iter().all(|p| dir.join(p).is_file()))
}

/// A port nobody listens on right now.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("cannot find a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("cannot find a free port: {e}"))
}

fn path_str(path: &Path) -> &str {
    // Temp dirs and package paths are ASCII; a lossy path would only fail the command visibly.
    path.to_str().unwrap_or_default()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("/tmp/a'b"), r"'/tmp/a'\''b'");
    }
}
