//! The `linkmesh` command: serve, check a server config, validate a fleet
//! config repository, and print the version.

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
    /// Validate a fleet config repository checkout (a plain directory; no
    /// git needed) with the rules the server applies to every commit. Exit
    /// 0 when valid; 1 listing every error with its file and key path; 2 on
    /// a usage error or when the collector could not be run.
    Validate {
        /// The config directory (the repository root, or its `dir`).
        dir: PathBuf,
        /// Also print the collector config rendered for this label set,
        /// e.g. `--render env=prod --render os=linux`.
        #[arg(long = "render", value_name = "KEY=VALUE")]
        render: Vec<String>,
        /// Also check every distinct render with this OpenTelemetry
        /// Collector binary's `validate --config`, as the server does with
        /// `config_store.collector_validator`.
        #[arg(long, value_name = "PATH")]
        collector: Option<PathBuf>,
        /// How long one collector check may take.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
        collector_timeout: std::time::Duration,
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
        Command::Validate {
            dir,
            render,
            collector,
            collector_timeout,
        } => {
            let validator = collector.map(|binary| linkmesh::configstore::CollectorValidator {
                binary,
                timeout: collector_timeout,
            });
            validate(&dir, &render, validator.as_ref())
        }
    }
}

fn validate(
    dir: &std::path::Path,
    render: &[String],
    validator: Option<&linkmesh::configstore::CollectorValidator>,
) -> ExitCode {
    let mut labels = std::collections::BTreeMap::new();
    for kv in render {
        match kv.split_once('=') {
            Some((k, v)) => {
                labels.insert(k.trim().to_string(), v.trim().to_string());
            }
            None => {
                eprintln!("--render {kv:?}: expected KEY=VALUE");
                return ExitCode::from(2);
            }
        }
    }
    let start = std::time::Instant::now();
    let mut unavailable = false;
    let mut checked = None;
    let loaded = linkmesh::configstore::load_dir(dir).and_then(|resources| {
        let Some(v) = validator else { return Ok(resources) };
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                unavailable = true;
                let msg = format!("cannot start the async runtime: {e}");
                return Err(vec![linkmesh::configstore::ValidationError::new("", "", msg)]);
            }
        };
        let verdict = runtime.block_on(v.check_commit(&resources, "working-tree"));
        unavailable = verdict.unavailable;
        checked = Some(verdict.checked);
        if verdict.errors.is_empty() {
            Ok(resources)
        } else {
            Err(verdict.errors)
        }
    });
    match loaded {
        Ok(resources) => {
            println!(
                "{}: OK ({} sources, {} processors, {} destinations, {} pipelines, {} routes; {} ms)",
                dir.display(),
                resources.sources.len(),
                resources.processors.len(),
                resources.destinations.len(),
                resources.pipelines.len(),
                resources.routes.len(),
                start.elapsed().as_millis()
            );
            if let (Some(n), Some(v)) = (checked, validator) {
                println!("{n} distinct render(s) accepted by {} validate", v.binary.display());
            }
            if !render.is_empty() {
                let snapshot = linkmesh::configstore::Snapshot {
                    revision: linkmesh::configstore::Revision {
                        commit: "working-tree".into(),
                        time: linkmesh::clock::Timestamp(0),
                        author: String::new(),
                        message: String::new(),
                    },
                    resources,
                };
                let r = snapshot.render(&labels);
                println!(
                    "# routes: {}; pipelines: {}; hash: {}",
                    r.routes.join(", "),
                    r.pipelines.join(", "),
                    r.hash
                );
                print!("{}", r.yaml);
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                let file = if e.file.is_empty() {
                    dir.display().to_string()
                } else {
                    dir.join(&e.file).display().to_string()
                };
                if e.key.is_empty() {
                    eprintln!("{file}: {}", e.message);
                } else {
                    eprintln!("{file}: {}: {}", e.key, e.message);
                }
            }
            eprintln!("{}: {} error(s)", dir.display(), errors.len());
            if unavailable {
                // Not a verdict on the config: the check itself failed.
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn serve(path: PathBuf) -> ExitCode {
    linkmesh::malloc::tune();
    let config = match linkmesh::config::load_file(&path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    // The blocking pool runs store calls and password hashing; bounded so a
    // burst (thousands of collectors connecting) cannot start hundreds of
    // threads. 32 keep the store busy on a 2-8 core machine.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(32)
        .enable_all()
        .build()
    {
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
