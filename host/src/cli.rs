//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A Pusher Channels (protocol v7) server that scales across nodes through plugin transports.
#[derive(Debug, Parser)]
#[command(name = "sockhost", version, about)]
pub struct Cli {
    /// The plugin manifest. Default: `plugins.toml` in the working directory, else next to the
    /// executable.
    #[arg(long, env = "SOCKHOST_PLUGINS", global = true, value_name = "FILE")]
    pub plugins: Option<PathBuf>,

    /// The config file (TOML, or JSON in Sockudo's shape). Default: `sockhost.toml`, else
    /// `config/config.toml`, else `config/config.json`, in the working directory, if present.
    #[arg(long, env = "SOCKHOST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on; overrides the config file and `HOST`. Default: 0.0.0.0.
    #[arg(long, value_name = "ADDR")]
    pub host: Option<String>,

    /// Port for WebSocket connections and the HTTP API; overrides the config file and `PORT`.
    /// Default: 6001.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,

    /// What to do; without a command the server runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands besides serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Inspect plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
}

/// `sockhost plugins ...`.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// What the manifest loads: each plugin with its version and drivers, and each refusal.
    /// Exits 1 if any plugin is refused.
    List,
    /// Check one plugin file against this host (permissions, ABI version, layouts) without a
    /// manifest. Exits 1 if it is refused.
    Check {
        /// The plugin library.
        file: PathBuf,
    },
    /// Check every plugin the manifest lists, then write each file's SHA-256 into the manifest,
    /// so that another build of a file is refused. Exits 1, writing nothing, if any is refused.
    Pin,
}
