//! LinkMesh: the control plane for fleets of telemetry collectors.
//!
//! `run` is the injectable entry point: the caller binds the listeners and
//! decides when to shut down, so tests bind port 0 and run several instances
//! in one process (sharing one `Store`, the shape of an HA pair).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod api;
pub mod clock;
pub mod config;
pub mod configstore;
pub mod domain;
pub mod storage;
pub mod telemetry;
pub mod tls;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, StorageBackend};
use crate::domain::{AuthSettings, Domain};
use crate::storage::{StorageError, Store};
use crate::telemetry::Metrics;

/// Sockets the server serves on, bound by the caller.
pub struct Listeners {
    /// Web UI, REST API (and OpAMP HTTP/WebSocket).
    pub http: TcpListener,
}

impl Listeners {
    /// Bind the listeners named in the config.
    pub async fn bind(config: &Config) -> Result<Listeners, RunError> {
        let addr = config.server.http_listen;
        let http = TcpListener::bind(addr).await.map_err(|e| RunError::Bind {
            key: "server.http_listen",
            addr: addr.to_string(),
            source: e,
        })?;
        Ok(Listeners { http })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("storage.backend = \"mongodb\" is not available in this build yet; use \"embedded\"")]
    BackendUnavailable,
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("bootstrap admin: {0}")]
    Bootstrap(domain::DomainError),
    #[error("config store: {0}")]
    ConfigStore(#[from] configstore::ConfigStoreError),
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// Where an instance keeps local files besides the embedded store (the
/// config repository mirror): the directory of `storage.embedded.path`.
pub fn data_dir(config: &Config) -> std::path::PathBuf {
    match config.storage.embedded.path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    }
}

/// Open the store the config names.
pub async fn open_store(config: &Config) -> Result<Store, RunError> {
    match config.storage.backend {
        StorageBackend::Embedded => Ok(Store::open_embedded(&config.storage.embedded.path).await?),
        StorageBackend::Mongodb => Err(RunError::BackendUnavailable),
    }
}

/// Run one server instance until `shutdown` completes, then drain in-flight
/// requests for at most `server.shutdown_grace`.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let store = open_store(&config).await?;
    run_with_store(config, store, Arc::new(SystemClock), listeners, shutdown).await
}

/// `run` on an already opened store and a given clock (tests share one
/// store between instances and move time).
pub async fn run_with_store(
    config: Config,
    store: Store,
    clock: Arc<dyn Clock>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let instance = config.instance_name();
    let metrics = Arc::new(Metrics::new(&instance));
    let store = store.with_metrics(metrics.clone());
    let settings = AuthSettings {
        session_ttl: config.auth.session_ttl,
        api_token_ttl: config.auth.api_token_ttl,
        enrollment_token_ttl: config.auth.enrollment_token_ttl,
    };
    let domain = Domain::new(store, clock.clone(), instance.clone(), settings);

    if let Some(pw) = &config.auth.bootstrap_admin_password {
        let name = &config.auth.bootstrap_admin_username;
        if domain.bootstrap_admin(name, pw).await.map_err(RunError::Bootstrap)? {
            tracing::info!(username = %name, "Created the bootstrap admin user.");
        }
    }

    let config_store = match &config.config_store {
        Some(cs) => {
            let options = configstore::StoreOptions {
                clock: clock.clone(),
                metrics: Some(metrics.clone()),
            };
            let handle = configstore::ConfigStoreHandle::start_with(cs, &data_dir(&config), options).await?;
            Some(handle)
        }
        None => None,
    };

    let state = Arc::new(
        api::AppState::new(
            domain.clone(),
            metrics,
            config.telemetry.metrics,
            instance.clone(),
            config.cookie_secure(),
            config.auth.session_ttl,
        )
        .with_config_store(config_store.clone()),
    );
    let app = api::router(state, config.server.max_request_bytes);

    let sweeper = tokio::spawn(sweep_sessions(domain.clone()));
    let addr = listeners.http.local_addr().map_err(RunError::Serve)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let graceful = async move {
        let _ = stop_rx.await;
    };
    let server = match &config.tls {
        Some(tls_cfg) => {
            let sc = tls::server_config(tls_cfg, &[b"h2", b"http/1.1"])?;
            let listener = tls::TlsListener::new(listeners.http, sc).map_err(RunError::Serve)?;
            tracing::info!(%addr, instance, "Serving HTTPS.");
            tokio::spawn(
                axum::serve(listener, app)
                    .with_graceful_shutdown(graceful)
                    .into_future(),
            )
        }
        None => {
            tracing::info!(%addr, instance, "Serving HTTP.");
            tokio::spawn(
                axum::serve(listeners.http, app)
                    .with_graceful_shutdown(graceful)
                    .into_future(),
            )
        }
    };
    let mut server = server;
    let result = tokio::select! {
        r = &mut server => r.map_err(|e| RunError::Serve(std::io::Error::other(e))).and_then(|r| r.map_err(RunError::Serve)),
        _ = shutdown => {
            tracing::info!(grace = ?config.server.shutdown_grace, "Shutting down; draining in-flight requests.");
            let _ = stop_tx.send(());
            match tokio::time::timeout(config.server.shutdown_grace, &mut server).await {
                Ok(_) => Ok(()),
                Err(_) => {
                    tracing::warn!("Shutdown grace expired; closing the remaining connections.");
                    server.abort();
                    Ok(())
                }
            }
        }
    };
    sweeper.abort();
    if let Some(cs) = &config_store {
        cs.stop();
    }
    result
}

/// Expired sessions are deleted every few minutes.
async fn sweep_sessions(domain: Domain) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        match domain.sweep_sessions().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "Removed expired sessions."),
            Err(e) => tracing::warn!(error = %e, "Sweeping expired sessions failed."),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
