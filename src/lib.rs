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
pub mod fleet;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod malloc;
pub mod owntelemetry;
pub mod rollout;
pub mod sim;
pub mod storage;
pub mod tasks;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod ui;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, StorageBackend};
use crate::domain::{AuthSettings, CredentialPolicy, Domain};
use crate::fleet::{Fleet, FleetSettings};
use crate::storage::{StorageError, Store};
use crate::tasks::Tasks;
use crate::telemetry::Metrics;

/// Sockets the server serves on, bound by the caller.
pub struct Listeners {
    /// Web UI, REST API and OpAMP HTTP/WebSocket.
    pub http: TcpListener,
    /// Collector gRPC endpoint.
    pub grpc: TcpListener,
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
        let addr = config.server.grpc_listen;
        let grpc = TcpListener::bind(addr).await.map_err(|e| RunError::Bind {
            key: "server.grpc_listen",
            addr: addr.to_string(),
            source: e,
        })?;
        Ok(Listeners { http, grpc })
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
    /// The MongoDB of `[database]` cannot be used (unreachable, not a
    /// replica set, too old, credentials refused, no `[database]` section).
    #[error("database.uri: {0}")]
    Database(StorageError),
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
        StorageBackend::Embedded => {
            let e = &config.storage.embedded;
            Ok(Store::open_embedded_with_cache(&e.path, e.cache_size).await?)
        }
        StorageBackend::Mongodb => {
            let db = config.database.as_ref().ok_or_else(|| {
                RunError::Database(StorageError::Unavailable(
                    "[database] is missing (needed by storage.backend = \"mongodb\")".into(),
                ))
            })?;
            Store::open_mongodb(db).await.map_err(RunError::Database)
        }
    }
}

/// Run one server instance until `shutdown` completes, then drain in-flight
/// requests for at most `server.shutdown_grace`. When it returns, every
/// task of the instance has ended and the store is closed (the embedded
/// file can be opened again at once, even in the same process).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let store = open_store(&config).await?;
    let result = run_with_store(config, store.clone(), Arc::new(SystemClock), listeners, shutdown).await;
    // A storage call whose caller was cancelled may still be finishing on
    // a blocking thread; wait for it so the last handle goes with `store`.
    store.idle().await;
    result
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
    // The instance's task set; see the comment at the top of `serve`.
    let tasks = Tasks::new();
    let result = serve(config, store, clock, listeners, shutdown, &tasks).await;
    // Also on an error: nothing may outlive `run`.
    tasks.stop().await;
    result
}

async fn serve(
    config: Config,
    store: Store,
    clock: Arc<dyn Clock>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    tasks: &Tasks,
) -> Result<(), RunError> {
    // EVERY BACKGROUND TASK OF THE INSTANCE RUNS ON `tasks` (see
    // `crate::tasks`): `tasks.spawn(name, fut)` for a loop with nothing to
    // finish, `tasks.spawn_graceful(name, |stop| ..)` for one that must
    // store something before it ends. At shutdown `run` cancels them all
    // and waits until every one has ended, so a stopped instance holds no
    // store handle, socket or timer. Never `tokio::spawn` a task that
    // outlives a request; pass `tasks` (or `fleet.tasks()`) down instead.
    let instance = config.instance_name();
    let metrics = Arc::new(Metrics::new(&instance));
    let store = store.with_metrics(metrics.clone());
    let settings = AuthSettings {
        session_ttl: config.auth.session_ttl,
        api_token_ttl: config.auth.api_token_ttl,
        enrollment_token_ttl: config.auth.enrollment_token_ttl,
    };
    let domain = Domain::new(store, clock.clone(), instance.clone(), settings)
        .with_credential_policy(CredentialPolicy {
            require_own_credential: config.auth.require_collector_credentials,
            rotation_overlap: config.auth.credential_rotation_overlap,
        })
        .with_tasks(tasks);

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
                tasks: Some(tasks.clone()),
            };
            let handle = configstore::ConfigStoreHandle::start_with(cs, &data_dir(&config), options).await?;
            Some(handle)
        }
        None => None,
    };
    let fleet = Fleet::start(
        domain.clone(),
        FleetSettings {
            instance: instance.clone(),
            liveness_timeout: config.fleet.liveness_timeout,
            public_url: config.server.public_url.clone(),
        },
        config_store.clone(),
        metrics.clone(),
        tasks.clone(),
    )
    .await;
    // One live fleet view for every open console page.
    let live = ui::live::LiveFleet::default();
    tasks.spawn(
        "console live view",
        live.clone().follow(
            fleet.clone(),
            domain.store().subscribe(),
            config_store.as_ref().map(|c| c.subscribe()),
        ),
    );
    // Staged rollouts: the view is loaded before any collector is served,
    // so none is resolved without the stored rollout.
    let rollout_driver = match &config_store {
        Some(cs) => {
            let mut d = rollout::Driver::new(domain.clone(), cs.clone(), fleet.clone(), metrics.clone());
            d.follow().await;
            Some(d)
        }
        None => None,
    };
    let own_telemetry = owntelemetry::OwnTelemetry::new(domain.clone(), instance.clone(), metrics.clone());
    // One enrollment budget per address for the API and the collector transports.
    let enroll_limit = Arc::new(api::ratelimit::RateLimiter::per_minute(
        config.auth.enroll_attempts_per_minute,
    ));
    let state = Arc::new(api::AppState {
        domain: domain.clone(),
        fleet: fleet.clone(),
        max_request_bytes: config.server.max_request_bytes,
        metrics,
        metrics_enabled: config.telemetry.metrics,
        instance: instance.clone(),
        cookie_secure: config.cookie_secure(),
        public_url: config.server.public_url.clone(),
        session_ttl: config.auth.session_ttl,
        config_store: config_store.clone(),
        limits: api::ratelimit::Limits {
            login: api::ratelimit::RateLimiter::per_minute(config.auth.login_attempts_per_minute),
            enroll: enroll_limit.clone(),
            trusted_proxies: config.server.trusted_proxies.clone().into(),
        },
        own_telemetry: own_telemetry.clone(),
        live: live.clone(),
        tasks: tasks.clone(),
        openapi_json: Default::default(),
    });
    // Connect info: rate limits count per client address.
    let app = api::router(state, config.server.max_request_bytes)
        .into_make_service_with_connect_info::<api::ratelimit::Peer>();

    // One stop signal for both servers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let tls = match &config.tls {
        Some(t) => Some(tls::server_config(t, &[b"h2", b"http/1.1"], tasks)?),
        None => None,
    };
    let http_addr = listeners.http.local_addr().map_err(RunError::Serve)?;
    let grpc_addr = listeners.grpc.local_addr().map_err(RunError::Serve)?;
    let web = match &tls {
        Some(sc) => {
            let listener = tls::TlsListener::new(listeners.http, sc.clone(), tasks).map_err(RunError::Serve)?;
            tokio::spawn(
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped(stop_rx.clone()))
                    .into_future(),
            )
        }
        None => tokio::spawn(
            axum::serve(listeners.http, app)
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        ),
    };
    let grpc_service = transport::grpc::service(
        fleet.clone(),
        config.server.max_request_bytes,
        transport::FirstContactLimit {
            limiter: enroll_limit,
            trusted_proxies: config.server.trusted_proxies.clone().into(),
        },
    );
    let grpc_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .tcp_nodelay(true)
        .add_service(grpc_service);
    let grpc = match &config.tls {
        Some(tls_cfg) => {
            let sc = tls::collector_server_config(tls_cfg, tasks)?;
            let listener = tls::TlsListener::new(listeners.grpc, sc, tasks).map_err(RunError::Serve)?;
            tokio::spawn(grpc_server.serve_with_incoming_shutdown(listener.into_stream(), stopped(stop_rx.clone())))
        }
        None => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc);
            tokio::spawn(grpc_server.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())))
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%http_addr, %grpc_addr, scheme, instance, "Serving the web/API and collector listeners.");

    tasks.spawn("session sweeper", sweep_sessions(domain.clone()));
    // Graceful: the figures held in memory are stored when it stops.
    let interval = config.fleet.telemetry_rollup_interval;
    tasks.spawn_graceful("own-telemetry rollup", |stop| {
        owntelemetry::run_writer(own_telemetry, interval, stop)
    });
    // Every instance obeys the one stored emergency config override.
    if let Some(cs) = config_store.clone() {
        tasks.spawn(
            "config override follower",
            domain::follow_config_override(domain.clone(), cs),
        );
    }
    if let Some(d) = rollout_driver {
        tasks.spawn("rollout driver", d.run());
    }
    let mut web = web;
    let mut grpc = grpc;
    let result = tokio::select! {
        r = &mut web => Err(RunError::Serve(match r {
            Ok(Ok(())) => std::io::Error::other("the web server stopped"),
            Ok(Err(e)) => e,
            Err(e) => std::io::Error::other(e),
        })),
        r = &mut grpc => Err(RunError::Serve(std::io::Error::other(match r {
            Ok(Ok(())) => "the gRPC server stopped".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        }))),
        _ = shutdown => {
            tracing::info!(grace = ?config.server.shutdown_grace, "Shutting down; draining in-flight requests.");
            // Stop accepting; then end the background tasks (collector
            // streams included) and close the sessions, so long-lived
            // streams do not hold the drain for the whole grace.
            let _ = stop_tx.send(true);
            tasks.stop().await;
            fleet.shutdown().await;
            let drained = tokio::time::timeout(config.server.shutdown_grace, async {
                let _ = (&mut web).await;
                let _ = (&mut grpc).await;
            })
            .await;
            if drained.is_err() {
                tracing::warn!("Shutdown grace expired; closing the remaining connections.");
                web.abort();
                grpc.abort();
            }
            Ok(())
        }
    };
    // Both servers have ended before `run` returns (one may still run if
    // the other failed; an aborted one is awaited until it is gone).
    let _ = stop_tx.send(true);
    if !web.is_finished() {
        web.abort();
        let _ = web.await;
    }
    if !grpc.is_finished() {
        grpc.abort();
        let _ = grpc.await;
    }
    // Again after the servers ended (or first, after a server failed): an
    // HTTP poll served during the drain may have opened a session.
    tasks.stop().await;
    // The driver has stopped: give the lease up so another instance
    // advances rollouts at once instead of after the expiry.
    if config_store.is_some() {
        rollout::Driver::release(&domain, &instance).await;
    }
    fleet.shutdown().await;
    if let Some(cs) = &config_store {
        cs.stop_and_wait().await;
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

/// Generated protocol code (proto/): OpAMP messages and the LinkMesh
/// collector service. Modules mirror the proto packages (`opamp.proto`,
/// `linkmesh.v1`) because the generated code refers to them by path.
pub mod proto {
    pub mod opamp {
        #[allow(clippy::all, clippy::unwrap_used, clippy::expect_used)]
        pub mod proto {
            tonic::include_proto!("opamp.proto");
        }
    }
    pub mod linkmesh {
        #[allow(clippy::all, clippy::unwrap_used, clippy::expect_used)]
        pub mod v1 {
            tonic::include_proto!("linkmesh.v1");
        }
    }
    /// The collector service's server as the gRPC endpoint runs it: its
    /// stream sends `crate::fleet::outbound::Outbound` (build.rs).
    #[allow(clippy::all, clippy::unwrap_used, clippy::expect_used)]
    pub mod server {
        include!(concat!(env!("OUT_DIR"), "/outbound/linkmesh.v1.rs"));
    }
    pub use linkmesh::v1 as service;
    pub use opamp::proto as opamp_msgs;
}
