//! `rdev-api`: see `rdev-api --help`.

use clap::Parser;

use app::config::{Cli, Command, ServeConfig};

fn main() -> anyhow::Result<()> {
    // The sandbox helper must run before any thread exists (it forks and enters namespaces),
    // so it is dispatched here, ahead of the runtime.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|mode| mode == adapters_process::sandbox::HELPER_MODE_ARG) {
        adapters_process::sandbox::helper_main(args);
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = app::telemetry::init(cli.log_format, &app::telemetry::TracingConfig::from_env()?)?;
    let db = cli.database();
    let code = match cli.command {
        None => {
            let cfg = ServeConfig::try_parse_from_env()?;
            app::cli::serve(&db, &cfg).await
        }
        Some(Command::Serve(cfg)) => app::cli::serve(&db, &cfg).await,
        Some(Command::Migrate) => app::cli::migrate(&db).await,
        Some(Command::Keys(cmd)) => app::cli::keys(&db, cmd).await,
        Some(Command::Audit(cmd)) => app::cli::audit(&db, cmd).await,
        Some(Command::Health(args)) => Ok(app::cli::health(&args).await),
    };
    // Spans of the last requests and commands go out before the process ends.
    telemetry.shutdown().await;
    match code {
        Ok(0) => Ok(()),
        Ok(code) => std::process::exit(code),
        Err(e) => {
            tracing::error!(error = %e, "rdev-api failed");
            eprintln!("rdev-api: {e}");
            std::process::exit(2)
        }
    }
}
