//! The server config schema. Every field is documented in README.md
//! ("Configuration reference"); keep the two in step.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{IpNet, Secret};

/// The whole server config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// TLS for the web listener (and the collector listener); absent = plain.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub storage: StorageConfig,
    /// MongoDB connection; required when `storage.backend = "mongodb"`.
    #[serde(default)]
    pub database: Option<DatabaseConfig>,
    /// The git repository holding the fleet configuration.
    #[serde(default)]
    pub config_store: Option<ConfigStoreConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub fleet: FleetConfig,
}

/// Collector sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// A collector that sends nothing for this long is marked disconnected
    /// (some OpAMP clients never send agent_disconnect); about three
    /// heartbeat intervals of the agents.
    #[serde(default = "default_liveness_timeout", with = "humantime_serde")]
    pub liveness_timeout: Duration,
    /// How often the figures a collector reports about itself (its own
    /// metrics, `POST /v1/metrics`) are stored as one rollup record per
    /// collector, so that every instance can show them.
    #[serde(default = "default_telemetry_rollup_interval", with = "humantime_serde")]
    pub telemetry_rollup_interval: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            liveness_timeout: default_liveness_timeout(),
            telemetry_rollup_interval: default_telemetry_rollup_interval(),
        }
    }
}

fn default_telemetry_rollup_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_liveness_timeout() -> Duration {
    Duration::from_secs(90)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the web UI, REST API and OpAMP HTTP/WebSocket listener.
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    /// Address of the collector gRPC listener.
    #[serde(default = "default_grpc_listen")]
    pub grpc_listen: SocketAddr,
    /// The URL users and collectors reach this instance (or its load
    /// balancer) at; used in links and cookie scoping.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Name of this instance in fleet status; defaults to the host name.
    #[serde(default)]
    pub instance_name: Option<String>,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Serve plain HTTP on a non-loopback address (behind a TLS-terminating
    /// proxy). Without it such a setup is refused at start-up.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Largest accepted request body, in bytes.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Load balancers / reverse proxies (addresses or CIDR blocks) whose
    /// `X-Forwarded-For` header names the client. Empty (the default): the
    /// header is ignored and the TCP peer is the client, so nobody can pick
    /// the address that rate limits count against.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http_listen: default_http_listen(),
            grpc_listen: default_grpc_listen(),
            public_url: None,
            instance_name: None,
            shutdown_grace: default_shutdown_grace(),
            allow_insecure_http: false,
            max_request_bytes: default_max_request_bytes(),
            trusted_proxies: Vec::new(),
        }
    }
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4320))
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_max_request_bytes() -> usize {
    4 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; re-read when the file changes.
    pub cert_file: PathBuf,
    /// PEM private key; re-read when the file changes.
    pub key_file: PathBuf,
    /// PEM CA bundle that collector client certificates must chain to (mTLS
    /// on the collector listener). Absent = no client certificates.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// redb, one file, one process: the default.
    #[default]
    Embedded,
    /// MongoDB replica set: required to run several instances (HA).
    Mongodb,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub backend: StorageBackend,
    #[serde(default)]
    pub embedded: EmbeddedConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// The redb file; its directory is created if missing.
    #[serde(default = "default_embedded_path")]
    pub path: PathBuf,
    /// Page cache in bytes (memory the store may keep for reads).
    #[serde(default = "default_embedded_cache")]
    pub cache_size: usize,
}

fn default_embedded_cache() -> usize {
    crate::storage::DEFAULT_EMBEDDED_CACHE
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            path: default_embedded_path(),
            cache_size: default_embedded_cache(),
        }
    }
}

fn default_embedded_path() -> PathBuf {
    PathBuf::from("data/linkmesh.redb")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// MongoDB connection string (secret: may carry credentials).
    #[serde(default)]
    pub uri: Option<Secret>,
    #[serde(default)]
    pub uri_file: Option<PathBuf>,
    /// Database name.
    #[serde(default = "default_database_name")]
    pub name: String,
    /// CA bundle for the database's TLS certificates.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Reaching the servers (DNS, connection, server selection).
    #[serde(default = "default_db_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The whole of one database operation, a commit with all its retries
    /// included: longer than a replica-set election (about 10-12 s), so a
    /// commit during a failover completes instead of failing.
    #[serde(default = "default_db_operation_timeout", with = "humantime_serde")]
    pub operation_timeout: Duration,
}

fn default_database_name() -> String {
    "linkmesh".into()
}
fn default_db_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_db_operation_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigStoreConfig {
    /// Local path, file://, https:// or ssh:// URL of the fleet config repo.
    pub url: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Subdirectory of the repository that holds the config.
    #[serde(default)]
    pub dir: Option<String>,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Credentials for a remote repository (token or ssh key).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// An OpenTelemetry Collector binary: every distinct render of a new
    /// commit is checked with its `validate --config` before the commit is
    /// served.
    #[serde(default)]
    pub collector_validator: Option<PathBuf>,
    /// How long one `validate` run may take before the commit is refused.
    #[serde(default = "default_collector_validator_timeout", with = "humantime_serde")]
    pub collector_validator_timeout: Duration,
    /// Let editors publish route drafts from the routing canvas as commits
    /// on `branch`. Only for a local repository; off by default, because a
    /// server that writes to the repository it serves is a choice to make
    /// deliberately.
    #[serde(default)]
    pub allow_publish: bool,
}

fn default_branch() -> String {
    "main".into()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_collector_validator_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// User created with role admin when the store has no user yet.
    #[serde(default = "default_admin_username")]
    pub bootstrap_admin_username: String,
    /// Its password (secret). No default: without it no user exists.
    #[serde(default)]
    pub bootstrap_admin_password: Option<Secret>,
    #[serde(default)]
    pub bootstrap_admin_password_file: Option<PathBuf>,
    /// Lifetime of a UI login session.
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure`; defaults to true when [tls] is set
    /// or `server.public_url` is https.
    #[serde(default)]
    pub cookie_secure: Option<bool>,
    /// Lifetime of an API token created without an explicit expiry.
    #[serde(default = "default_api_token_ttl", with = "humantime_serde")]
    pub api_token_ttl: Duration,
    /// Lifetime of an enrollment token created without an explicit expiry.
    #[serde(default = "default_enrollment_token_ttl", with = "humantime_serde")]
    pub enrollment_token_ttl: Duration,
    /// Login attempts per client address and minute (also the burst);
    /// more get 429 with `Retry-After`.
    #[serde(default = "default_login_attempts_per_minute")]
    pub login_attempts_per_minute: u32,
    /// Refused enrollments per client address and minute (also the burst),
    /// one budget for `POST /api/v1/enroll`, gRPC `Enroll` and first
    /// contact with an enrollment token over OpAMP WebSocket, OpAMP HTTP
    /// and gRPC; beyond it every attempt gets 429 with `Retry-After`
    /// (gRPC: RESOURCE_EXHAUSTED). Successful enrollments do not count.
    #[serde(default = "default_enroll_attempts_per_minute")]
    pub enroll_attempts_per_minute: u32,
    /// Every enrollment token requires agents to switch to a credential of
    /// their own (as the token flag `require_own_credential` does): agents
    /// that cannot accept OpAMP connection settings are refused on first
    /// contact and enroll through `POST /api/v1/enroll` instead.
    #[serde(default)]
    pub require_collector_credentials: bool,
    /// How long a collector credential replaced over OpAMP connection
    /// settings stays valid when the agent does not reconnect with the new
    /// one.
    #[serde(default = "default_credential_rotation_overlap", with = "humantime_serde")]
    pub credential_rotation_overlap: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            bootstrap_admin_username: default_admin_username(),
            bootstrap_admin_password: None,
            bootstrap_admin_password_file: None,
            session_ttl: default_session_ttl(),
            cookie_secure: None,
            api_token_ttl: default_api_token_ttl(),
            enrollment_token_ttl: default_enrollment_token_ttl(),
            login_attempts_per_minute: default_login_attempts_per_minute(),
            enroll_attempts_per_minute: default_enroll_attempts_per_minute(),
            require_collector_credentials: false,
            credential_rotation_overlap: default_credential_rotation_overlap(),
        }
    }
}

fn default_admin_username() -> String {
    "admin".into()
}
fn default_session_ttl() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_api_token_ttl() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}
fn default_enrollment_token_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_login_attempts_per_minute() -> u32 {
    20
}
fn default_enroll_attempts_per_minute() -> u32 {
    60
}
fn default_credential_rotation_overlap() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default)]
    pub log_format: LogFormat,
    /// tracing filter directive, e.g. "info" or "linkmesh=debug,info".
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// OTLP/gRPC endpoint for trace export, e.g. "http://127.0.0.1:4317".
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Serve Prometheus metrics at /metrics.
    #[serde(default = "default_true")]
    pub metrics: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::default(),
            log_level: default_log_level(),
            otlp_endpoint: None,
            service_name: default_service_name(),
            metrics: true,
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}
fn default_service_name() -> String {
    "linkmesh".into()
}
fn default_true() -> bool {
    true
}

impl Config {
    /// Whether the session cookie gets the `Secure` attribute.
    pub fn cookie_secure(&self) -> bool {
        self.auth.cookie_secure.unwrap_or_else(|| {
            self.tls.is_some()
                || self
                    .server
                    .public_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://"))
        })
    }

    /// The instance name shown in fleet status.
    pub fn instance_name(&self) -> String {
        self.server.instance_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "linkmesh".into())
        })
    }
}
