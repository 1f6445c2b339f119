//! The `linkmesh` command: serve, check a config, and print the version.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "linkmesh",
    version,
    about = "Control plane for fleets of telemetry collectors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// The server config file (TOML).
        #[arg(long, short, env = "LINKMESH_CONFIG", default_value = "config/linkmesh.toml")]
        config: PathBuf,
    },
    /// Check a server config file (with the environment's overrides); exit
    /// non-zero listing every error with its key path.
    CheckConfig {
        /// The server config file (TOML).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match linkmesh::config::load_file(&file) {
            Ok(_) => {
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => serve(config),
    }
}

fn serve(path: PathBuf) -> ExitCode {
    let config = match linkmesh::config::load_file(&path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    runtime.block_on(async move {
        let _guard = match linkmesh::telemetry::init_tracing(&config.telemetry) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("cannot set up telemetry: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = async {
            let listeners = linkmesh::Listeners::bind(&config).await?;
            linkmesh::run(config, listeners, linkmesh::shutdown_signal()).await
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!("Stopped.");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "The server stopped with an error.");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
