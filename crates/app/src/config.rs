//! Configuration: one struct, built once from flags and the environment (DESIGN.md §4 names).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use domain::network::CidrList;

/// `DATABASE_URL`, whose password never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it selects the SQLite store.
    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:") || !self.0.contains("://")
    }

    /// True for `postgres://` and `postgresql://`.
    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err("DATABASE_URL must not be empty".into());
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // postgres://user:secret@host/db → postgres://user:[redacted]@host/db
        match (self.0.find("://"), self.0.rfind('@')) {
            (Some(scheme), Some(at)) if self.0[scheme + 3..at].contains(':') => {
                let colon = scheme + 3 + self.0[scheme + 3..at].find(':').unwrap_or(0);
                write!(f, "{}:[redacted]{}", &self.0[..colon], &self.0[at..])
            }
            _ => f.write_str(&self.0),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// Where commands run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExecutorKind {
    /// Local child processes in per-project directories.
    Process,
    /// Kubernetes pods.
    Kube,
}

/// Whether the process executor sandboxes commands (`PROCESS_SANDBOX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxSwitch {
    /// Every command in its own user, PID and mount namespaces (the default).
    On,
    /// Commands run as the server's own user, with nothing between them and the server.
    Off,
}

/// The network of sandboxed commands (`PROCESS_NETWORK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProcessNetwork {
    /// The host's network.
    Host,
    /// An empty network namespace (loopback only).
    None,
}

/// rdev-api: run shell commands for automation in per-project development pods.
#[derive(Debug, Parser)]
#[command(name = "rdev-api", version, about)]
pub struct Cli {
    /// Store: `sqlite://path` (default) or `postgres://…`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://rdev.db", global = true)]
    pub database_url: DatabaseUrl,
    /// Connections per replica to Postgres (ignored for SQLite).
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16, global = true)]
    pub database_pool_size: u32,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty", global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Which database, and how many connections to it.
#[derive(Debug, Clone)]
pub struct Database {
    /// `DATABASE_URL`.
    pub url: DatabaseUrl,
    /// `DATABASE_POOL_SIZE` (Postgres only).
    pub pool_size: u32,
}

impl Cli {
    /// The database settings shared by every subcommand.
    pub fn database(&self) -> Database {
        Database { url: self.database_url.clone(), pool_size: self.database_pool_size }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once at start-up; boxing would only add noise")]
pub enum Command {
    /// Serve the HTTP API and run the queue worker.
    Serve(ServeConfig),
    /// Apply pending database migrations.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Probe a running replica's `/readyz` (for container health checks: the image has no curl);
    /// exits 0 when it answers 200, else 1 with the reason on one line.
    Health(HealthArgs),
}

/// `health`: where the replica to probe listens.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The full URL to probe; default `http://{LISTEN_ADDR}/readyz`.
    #[arg(long)]
    pub url: Option<String>,
    /// The replica's listen address (as for `serve`); an unspecified address (`0.0.0.0`, `::`)
    /// is probed on loopback.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub timeout_seconds: u64,
}

impl HealthArgs {
    /// The URL to probe.
    pub fn target(&self) -> String {
        if let Some(url) = &self.url {
            return url.clone();
        }
        let mut addr = self.listen_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}/readyz")
    }
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (shown once).
    Create {
        /// Key name.
        #[arg(long)]
        name: String,
        /// Scope (repeat for several).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Limit the key to this project (repeat for several; default all).
        #[arg(long = "project")]
        projects: Vec<String>,
        /// Print one JSON object with `id` and `key`.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id.
    Revoke {
        /// Key id.
        id: String,
    },
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; exits 1 when a record was tampered with. With the checkpoint key
    /// it also proves that no record up to the last checkpoint was deleted or recomputed.
    Verify {
        /// The checkpoint key (the same setting as `serve`).
        #[command(flatten)]
        checkpoints: AuditCheckpointArgs,
    },
}

/// Signed audit checkpoints (`AUDIT_CHECKPOINT_*`): shared by `serve` and `audit verify`.
#[derive(Debug, Clone, Args)]
pub struct AuditCheckpointArgs {
    /// File holding the secret that signs audit checkpoints (at least 32 bytes); never stored
    /// in the database. Without it no checkpoints are made and completeness stays unproven.
    #[arg(long, env = "AUDIT_CHECKPOINT_KEY_FILE")]
    pub audit_checkpoint_key_file: Option<PathBuf>,
    /// Sign a checkpoint after every this many audit records.
    #[arg(long, env = "AUDIT_CHECKPOINT_RECORDS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub audit_checkpoint_records: u32,
    /// And at least this often (seconds) while records arrive, so a quiet tail is covered.
    #[arg(long, env = "AUDIT_CHECKPOINT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub audit_checkpoint_seconds: u64,
}

/// Everything `serve` needs.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,
    /// A second listener for `/debug/pprof/profile` alone, which then leaves the main port;
    /// loopback peers there (`kubectl port-forward`) need no key. Unset: profiles are served on
    /// the main port to admin keys.
    #[arg(long, env = "DEBUG_LISTEN_ADDR")]
    pub debug_listen_addr: Option<SocketAddr>,
    /// Executor backend.
    #[arg(long, env = "EXECUTOR", value_enum, default_value = "process")]
    pub executor: ExecutorKind,
    /// Namespace of project pods (kube executor).
    #[arg(long, env = "KUBE_NAMESPACE", default_value = "rdev-projects")]
    pub kube_namespace: String,
    /// How long the Kubernetes circuit breaker stays open before it lets probe calls through.
    #[arg(long, env = "KUBE_BREAKER_OPEN_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub kube_breaker_open_seconds: u64,
    /// How long the pod watch's leader lease lasts (kube executor): the leader renews it every
    /// third of it, and a replica that died is replaced as leader within about this long.
    #[arg(long, env = "POD_WATCH_LEASE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub pod_watch_lease_seconds: u64,
    /// Name of the pod watch's Lease in `KUBE_NAMESPACE` (kube executor); replicas that share it
    /// elect one leader among them.
    #[arg(long, env = "POD_WATCH_LEASE_NAME", default_value = "rdev-api-pod-watch", value_parser = parse_object_name)]
    pub pod_watch_lease_name: String,
    /// Kubeconfig file for the kube executor; without it the standard inference applies
    /// (`KUBECONFIG`, `~/.kube/config`, then the in-cluster service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Commands this replica runs at once (0: serve the API and reap expired leases, run nothing).
    #[arg(long, env = "CONCURRENT_COMMANDS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub concurrent_commands: u32,
    /// Requests per second per key, averaged over the window.
    #[arg(long, env = "RATE_LIMIT_RPS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate_limit_rps: u32,
    /// Rate-limit window.
    #[arg(long, env = "RATE_LIMIT_WINDOW_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub rate_limit_window_seconds: u32,
    /// Failed authentications per second and client address, sustained; beyond the burst the
    /// address's further failures answer `429` (a valid key from it is never refused).
    #[arg(long, env = "AUTH_FAILURE_RPS", default_value_t = services::auth_failures::DEFAULT_RPS, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub auth_failure_rps: u32,
    /// Failed authentications a client address may spend at once.
    #[arg(long, env = "AUTH_FAILURE_BURST", default_value_t = services::auth_failures::DEFAULT_BURST, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub auth_failure_burst: u32,
    /// Failed authentications are audited as one record per address, reason, key and window
    /// of this many seconds, carrying a count.
    #[arg(long, env = "AUTH_FAILURE_AUDIT_WINDOW_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub auth_failure_audit_window_seconds: u64,
    /// Captured output per stream (head and tail kept).
    #[arg(long, env = "MAX_OUTPUT_BYTES", default_value_t = 1024 * 1024)]
    pub max_output_bytes: usize,
    /// Largest request body.
    #[arg(long, env = "MAX_REQUEST_BYTES", default_value_t = 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Longest a request body may take to arrive; a slower one gets 408 `request_timeout`.
    #[arg(long, env = "BODY_READ_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_read_timeout_seconds: u64,
    /// Allow webhooks to private, loopback and link-local targets.
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE_TARGETS", default_value_t = false)]
    pub webhook_allow_private_targets: bool,
    /// CIDRs whose `X-Forwarded-For` is believed (comma-separated).
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = parse_cidrs)]
    pub trusted_proxies: CidrList,
    /// On an empty database, create an admin key and write it here (mode 0600).
    #[arg(long, env = "BOOTSTRAP_ADMIN_KEY_FILE")]
    pub bootstrap_admin_key_file: Option<PathBuf>,
    /// Where the process executor keeps project workspaces.
    #[arg(long, env = "WORKSPACES_DIR", default_value = "workspaces")]
    pub workspaces_dir: PathBuf,
    /// Sandbox each command of the process executor (user, PID and mount namespaces). `off`
    /// runs commands as the server's own user: only for hosts that cannot have namespaces.
    #[arg(long, env = "PROCESS_SANDBOX", value_enum, default_value = "on")]
    pub process_sandbox: SandboxSwitch,
    /// Network of sandboxed commands: the host's, or none (loopback only).
    #[arg(long, env = "PROCESS_NETWORK", value_enum, default_value = "host")]
    pub process_network: ProcessNetwork,
    /// The uid sandboxed commands run as (never 0); also the owner of workspaces when the
    /// server runs as root.
    #[arg(long, env = "COMMAND_UID", default_value_t = adapters_process::sandbox::DEFAULT_COMMAND_ID, value_parser = clap::value_parser!(u32).range(1..))]
    pub command_uid: u32,
    /// The gid sandboxed commands run as (never 0).
    #[arg(long, env = "COMMAND_GID", default_value_t = adapters_process::sandbox::DEFAULT_COMMAND_ID, value_parser = clap::value_parser!(u32).range(1..))]
    pub command_gid: u32,
    /// The executable that sets up the sandbox; by default `rdev-sandbox` next to this binary
    /// when it is there, else this very binary (`__sandbox` mode). Tests that run the service
    /// in-process point it at the built `rdev-api`.
    #[arg(long, env = "SANDBOX_HELPER", hide = true)]
    pub sandbox_helper: Option<PathBuf>,
    /// Server files (database, key file) that commands must not see even if a mounted system
    /// directory holds them; filled in by `Service::start`, not a flag.
    #[arg(skip)]
    pub sandbox_hidden_paths: Vec<PathBuf>,
    /// Seconds running commands get to finish on SIGTERM before they are handed back.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 25)]
    pub shutdown_grace_seconds: u64,
    /// Event streams one key may hold open at once, counted per replica; beyond it `429`.
    #[arg(long, env = "MAX_STREAMS_PER_KEY", default_value_t = services::open_requests::DEFAULT_MAX_STREAMS_PER_KEY, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_streams_per_key: u32,
    /// Queued commands per project when the project sets no `max_queued_commands`; beyond it
    /// a submit answers `429` `queue_full`.
    #[arg(long, env = "MAX_QUEUED_COMMANDS", default_value_t = services::commands::DEFAULT_MAX_QUEUED_COMMANDS, value_parser = clap::value_parser!(u32).range(1..=i64::from(domain::project::MAX_QUEUED_LIMIT)))]
    pub max_queued_commands: u32,
    /// Finished commands (with output and events) older than this are deleted: `30d`, `12h`,
    /// `90m`, `45s` or bare seconds.
    #[arg(long, env = "COMMAND_RETENTION", default_value = "30d", value_parser = parse_age)]
    pub command_retention: std::time::Duration,
    /// Webhook deliveries (with their attempts) older than this are deleted; same syntax.
    #[arg(long, env = "WEBHOOK_RETENTION", default_value = "30d", value_parser = parse_age)]
    pub webhook_retention: std::time::Duration,
    /// Pause between retention passes; same syntax.
    #[arg(long, env = "RETENTION_INTERVAL", default_value = "1h", value_parser = parse_age)]
    pub retention_interval: std::time::Duration,
    /// Signed audit checkpoints.
    #[command(flatten)]
    pub audit_checkpoints: AuditCheckpointArgs,
    /// TTL of the API key cache, in milliseconds (bounds cross-replica revocation delay).
    #[arg(long, env = "KEY_CACHE_TTL_MS", default_value_t = 500)]
    pub key_cache_ttl_ms: u64,
    /// Lease of a running command. A replica that is alive but silent (stopped, cut off from
    /// the database) for longer loses its commands (`lost`), found by any replica's reaper
    /// within one renewal interval more; one that dies is found within 5 s without it.
    #[arg(long, env = "LEASE_SECONDS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_seconds: u64,
    /// How often a running command's lease is renewed (and expired leases looked for);
    /// a quarter of `LEASE_SECONDS` when unset.
    #[arg(long, env = "LEASE_RENEW_SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_renew_seconds: Option<u64>,
    /// Apply pending migrations when `serve` starts (SQLite always does). With Postgres,
    /// replicas serialize on an advisory lock, so several may start at once.
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
}

/// The longest a silent replica's commands may stay `running` after its last lease renewal.
pub const MAX_SILENT_LOSS: Duration = Duration::from_secs(30);

/// How running commands' leases are kept and settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// The lease a claim or renewal grants.
    pub lease: Duration,
    /// How often leases are renewed, and expired ones looked for.
    pub renew_every: Duration,
}

impl ServeConfig {
    /// The lease settings, checked against the rules they serve: a lease survives one failed
    /// renewal, and a silent replica's commands are `lost` within 30 s of its last renewal.
    pub fn lease_timing(&self) -> Result<LeaseTiming, String> {
        let lease = Duration::from_secs(self.lease_seconds);
        let renew_every = self.lease_renew_seconds.map_or(lease / 4, Duration::from_secs);
        if renew_every * 2 > lease {
            return Err(format!(
                "LEASE_RENEW_SECONDS ({}) must be at most half of LEASE_SECONDS ({}), so that one failed \
                 renewal does not lose a running command",
                renew_every.as_secs_f64(),
                self.lease_seconds
            ));
        }
        if lease + renew_every > MAX_SILENT_LOSS {
            return Err(format!(
                "LEASE_SECONDS ({}) plus LEASE_RENEW_SECONDS ({}) must not exceed {}: a silent replica's \
                 commands are reported lost within that many seconds of its last renewal",
                self.lease_seconds,
                renew_every.as_secs_f64(),
                MAX_SILENT_LOSS.as_secs()
            ));
        }
        Ok(LeaseTiming { lease, renew_every })
    }

    /// The serve settings from the environment alone (for a bare `rdev-api`).
    pub fn try_parse_from_env() -> Result<ServeConfig, clap::Error> {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeConfig,
        }
        Only::try_parse_from(["rdev-api"]).map(|o| o.serve)
    }
}

/// A retention age: a whole number with a unit, `s`, `m`, `h` or `d` (`30d`, `12h`), or bare
/// seconds (`86400`); at least one second and at most ten years.
pub fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => s.split_at(at),
        None => (s, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: use a whole number with s, m, h or d, e.g. 30d or 12h")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?}: use a whole number with s, m, h or d, e.g. 30d"))?;
    let secs = n.checked_mul(scale).filter(|secs| (1..=10 * 365 * 86_400).contains(secs));
    secs.map(std::time::Duration::from_secs).ok_or_else(|| format!("{s:?}: must be between 1s and 3650d"))
}

/// A Kubernetes object name (DNS subdomain): lowercase letters, digits, '-' and '.', starting and
/// ending with a letter or digit, at most 253 characters.
pub fn parse_object_name(name: &str) -> Result<String, String> {
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = name.len() <= 253
        && name.starts_with(valid)
        && name.ends_with(valid)
        && name.chars().all(|c| valid(c) || c == '-' || c == '.');
    if ok {
        Ok(name.to_owned())
    } else {
        Err(format!("{name:?} is not a valid object name (lowercase letters, digits, '-' and '.')"))
    }
}

fn parse_cidrs(s: &str) -> Result<CidrList, String> {
    let items: Vec<&str> = s.split(',').map(str::trim).filter(|i| !i.is_empty()).collect();
    CidrList::parse(&items).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_ages_take_a_unit_or_seconds() {
        let secs = |s| parse_age(s).map(|d| d.as_secs());
        assert_eq!(secs("30d"), Ok(30 * 86_400));
        assert_eq!(secs("12h"), Ok(43_200));
        assert_eq!(secs("90m"), Ok(5_400));
        assert_eq!(secs("45s"), Ok(45));
        assert_eq!(secs("86400"), Ok(86_400));
        for bad in ["", "0", "0d", "1w", "1.5d", "-1d", "d", "3651d", "99999999999999999999"] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn database_passwords_are_redacted() {
        let url: DatabaseUrl = "postgres://rdev:hunter2@db:5432/rdev".parse().expect("url");
        let shown = format!("{url:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db:5432"));
    }

    #[test]
    fn defaults_match_the_design() {
        let cli = Cli::try_parse_from(["rdev-api", "serve"]).expect("parse");
        let Some(Command::Serve(c)) = cli.command else { panic!("serve expected") };
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:8080");
        assert_eq!((c.concurrent_commands, c.rate_limit_rps, c.rate_limit_window_seconds), (5, 10, 10));
        assert_eq!((c.max_output_bytes, c.max_request_bytes), (1 << 20, 1 << 20));
        assert!(cli.database_url.is_sqlite());
        let timing = c.lease_timing().expect("the defaults keep the lease rules");
        assert_eq!((timing.lease, timing.renew_every), (Duration::from_secs(20), Duration::from_secs(5)));
    }

    #[test]
    fn pod_watch_lease_names_are_object_names() {
        assert_eq!(parse_object_name("rdev-api-pod-watch.v2"), Ok("rdev-api-pod-watch.v2".into()));
        for bad in ["", "Upper", "-lead", "trail-", "under_score", "sp ace", &"a".repeat(254)] {
            assert!(parse_object_name(bad).is_err(), "{bad:?}");
        }
        let refused = Cli::try_parse_from(["rdev-api", "serve", "--pod-watch-lease-name", "Bad_Name"]);
        assert!(refused.is_err_and(|e| e.to_string().contains("not a valid object name")));
    }

    #[test]
    fn lease_settings_that_break_the_rules_are_refused_by_name() {
        let serve = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["rdev-api", "serve"], args].concat()).expect("parse");
            let Some(Command::Serve(c)) = cli.command else { panic!("serve expected") };
            c.lease_timing()
        };
        let short = serve(&["--lease-seconds", "4", "--lease-renew-seconds", "5"]).expect_err("renewal after expiry");
        assert!(short.contains("LEASE_RENEW_SECONDS (5)") && short.contains("LEASE_SECONDS (4)"), "{short}");
        let half = serve(&["--lease-seconds", "10", "--lease-renew-seconds", "6"]).expect_err("one miss loses it");
        assert!(half.contains("at most half"), "{half}");
        let long = serve(&["--lease-seconds", "60"]).expect_err("a silent replica found too late");
        assert!(long.contains("LEASE_SECONDS (60)") && long.contains("30"), "{long}");
        assert_eq!(
            serve(&["--lease-seconds", "6", "--lease-renew-seconds", "2"]),
            Ok(LeaseTiming { lease: Duration::from_secs(6), renew_every: Duration::from_secs(2) })
        );
    }

    #[test]
    fn health_probes_loopback_for_an_unspecified_listen_address() {
        let target = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).expect("parse");
            let Some(Command::Health(h)) = cli.command else { panic!("health expected") };
            h.target()
        };
        assert_eq!(target(&["rdev-api", "health"]), "http://127.0.0.1:8080/readyz");
        assert_eq!(target(&["rdev-api", "health", "--listen-addr", "0.0.0.0:9000"]), "http://127.0.0.1:9000/readyz");
        assert_eq!(target(&["rdev-api", "health", "--listen-addr", "[::]:9000"]), "http://[::1]:9000/readyz");
        assert_eq!(target(&["rdev-api", "health", "--listen-addr", "10.1.2.3:80"]), "http://10.1.2.3:80/readyz");
        assert_eq!(target(&["rdev-api", "health", "--url", "http://x:1/readyz"]), "http://x:1/readyz");
    }
}
