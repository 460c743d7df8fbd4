//! The `sockhost` binary: parse the command line, then hand over to the library.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use sockhost::{
    cli::{Cli, Command, PluginsCommand},
    config::{self, Sources},
    inspect,
    plugins::{Drivers, PluginLine, Registry},
    telemetry,
};

/// jemalloc, set up to give memory back: with the system allocator a node kept most of a
/// connection spike's memory (114 MB against 20 MB before 10,000 connections came and went).
/// Built with background threads on (the `background_threads` feature), which purge freed pages
/// within jemalloc's decay time (10 s) even while the server is idle; its default
/// `muzzy_decay_ms:0` returns them with `MADV_DONTNEED`, so the resident size drops at once.
/// An operator may tune it with `_RJEM_MALLOC_CONF`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Every refusal is one line, without a backtrace whatever `RUST_BACKTRACE` says: an
    // operator reads what is wrong, not where in the code it was noticed.
    match run(&cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let exe_dir = exe_dir()?;
    match &cli.command {
        Some(Command::Plugins(command)) => {
            telemetry::init(&telemetry::LogSettings::default());
            let out = &mut std::io::stdout().lock();
            match command {
                PluginsCommand::Check { file } => Ok(verdict(inspect::check(file, out)?)),
                PluginsCommand::List => {
                    let manifest = inspect::manifest(cli.plugins.as_deref(), &exe_dir)?;
                    Ok(verdict(inspect::list(&manifest, out)?))
                }
                PluginsCommand::Pin => {
                    let manifest = inspect::manifest(cli.plugins.as_deref(), &exe_dir)?;
                    Ok(verdict(inspect::pin(&manifest, out)?))
                }
            }
        }
        None | Some(Command::Serve) => serve(cli, &exe_dir),
    }
}

fn verdict(ok: bool) -> ExitCode {
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn exe_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the executable's path")?;
    Ok(exe.parent().map(PathBuf::from).unwrap_or_default())
}

fn serve(cli: &Cli, exe_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let sources = Sources {
        file: Sources::locate_file(cli.config.as_deref()),
        env: std::env::vars().collect(),
        host: cli.host.clone(),
        port: cli.port,
    };
    let settings = match config::settings(&sources) {
        Ok(settings) => settings,
        Err(errors) => {
            for error in errors {
                eprintln!("configuration: {error}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    telemetry::init(&settings.log);
    let manifest = inspect::manifest(cli.plugins.as_deref(), exe_dir)?;
    let mut registry = Registry::new();
    let refusals = registry.load_manifest(&manifest);
    if !refusals.is_empty() {
        for refusal in &refusals {
            eprintln!("refused {refusal}");
        }
        return Ok(ExitCode::FAILURE);
    }
    for plugin in registry.plugins() {
        tracing::info!(plugin = %PluginLine(plugin), path = %plugin.path.display(), "Loaded plugin.");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let drivers = match Drivers::build(&registry, &settings.drivers).await {
            Ok(drivers) => drivers,
            Err(errors) => {
                for error in errors {
                    eprintln!("{error}");
                }
                return Ok(ExitCode::FAILURE);
            }
        };
        let listener = tokio::net::TcpListener::bind((settings.host.as_str(), settings.port))
            .await
            .with_context(|| format!("binding {}:{}", settings.host, settings.port))?;
        sockhost::run(listener, settings, drivers, shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = ctrl_c.await;
        return;
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
