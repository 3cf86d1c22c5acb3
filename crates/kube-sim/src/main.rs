//! `kube-sim`: runs the simulator until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use kube_sim::{KubeSim, SimConfig};

/// A small Kubernetes API server (pods, pods/log, pods/exec) for tests and local runs.
#[derive(Debug, Parser)]
#[command(name = "kube-sim", version)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Where to write a kubeconfig that points at the simulator.
    #[arg(long)]
    kubeconfig_out: PathBuf,
    /// Default namespace of the kubeconfig's context.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Milliseconds a new pod stays Pending before it runs.
    #[arg(long, default_value_t = 500)]
    ready_delay_ms: u64,
    /// Parent of the pods' directories (default: a fresh directory under the system temp dir).
    #[arg(long)]
    pods_root: Option<PathBuf>,
    /// Seconds between the BOOKMARK events of watches that allow them.
    #[arg(long, default_value_t = 60)]
    bookmark_interval_seconds: u64,
    /// Bearer token required on API requests (also written into the kubeconfig).
    #[arg(long, env = "KUBE_SIM_TOKEN")]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "kube_sim=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let pods_root =
        args.pods_root.unwrap_or_else(|| std::env::temp_dir().join(format!("kube-sim-{}", std::process::id())));
    let config = SimConfig {
        listen: args.listen,
        ready_delay: Duration::from_millis(args.ready_delay_ms),
        pods_root: pods_root.clone(),
        token: args.token,
        bookmark_interval: Duration::from_secs(args.bookmark_interval_seconds.max(1)),
    };
    let sim = KubeSim::start(config).await?;
    sim.write_kubeconfig(&args.kubeconfig_out, &args.namespace)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "kube-sim listening on {}", sim.base_url())?;
    writeln!(out, "kubeconfig written to {}", args.kubeconfig_out.display())?;
    writeln!(out, "pods under {}", pods_root.display())?;
    out.flush()?;
    drop(out);
    wait_for_signal().await?;
    tracing::info!("shutting down");
    sim.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = term.recv() => Ok(()),
    }
}
