//! TLS for the listeners, with rustls (ring provider). The certificate and
//! key are re-read when their files change (checked every few seconds), so
//! a renewed certificate is served without a restart; a broken renewal is
//! logged and the previous certificate keeps serving.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::tasks::Tasks;

/// How often the certificate files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(2);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|e| file_err(cert, e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(cert, "no certificate found"));
    }
    let key_pem = std::fs::read(key).map_err(|e| file_err(key, e.to_string()))?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| file_err(key, format!("not a PEM private key: {e}")))?
        .ok_or_else(|| file_err(key, "no private key found"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| file_err(key, format!("unsupported private key: {e}")))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| file_err(key, format!("does not match {}: {e}", cert.display())))?;
    Ok(ck)
}

/// Serves the current certificate; swapped by the reload task.
#[derive(Debug)]
struct ReloadingResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock would only mean a panic during a swap; the old
        // value is still a valid certificate.
        Some(match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        })
    }
}

fn mtimes(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Build a rustls server config for `cfg`, and start watching its files.
/// The watcher runs on `tasks` (it ends with the instance).
pub fn server_config(cfg: &TlsConfig, alpn: &[&[u8]], tasks: &Tasks) -> Result<Arc<ServerConfig>, TlsError> {
    build_server_config(cfg, alpn, None, tasks)
}

/// The collector listener's config: like `server_config`, plus optional
/// client certificates chaining to `tls.client_ca_file` (mTLS). A client
/// without a certificate may still connect and present a bearer
/// credential; one with a certificate that does not verify is refused in
/// the handshake.
pub fn collector_server_config(cfg: &TlsConfig, tasks: &Tasks) -> Result<Arc<ServerConfig>, TlsError> {
    build_server_config(cfg, &[b"h2"], cfg.client_ca_file.as_deref(), tasks)
}

fn build_server_config(
    cfg: &TlsConfig,
    alpn: &[&[u8]],
    client_ca: Option<&Path>,
    tasks: &Tasks,
) -> Result<Arc<ServerConfig>, TlsError> {
    let initial = load_certified_key(&cfg.cert_file, &cfg.key_file)?;
    let resolver = Arc::new(ReloadingResolver {
        current: RwLock::new(Arc::new(initial)),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| file_err(ca, e.to_string()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| file_err(ca, format!("not a PEM certificate: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| file_err(ca, format!("unusable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(file_err(ca, "no CA certificate found"));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| file_err(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut sc = builder.with_cert_resolver(resolver.clone());
    sc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let (cert, key) = (cfg.cert_file.clone(), cfg.key_file.clone());
    let weak = Arc::downgrade(&resolver);
    tasks.spawn("TLS certificate reload", async move {
        let files = vec![cert.clone(), key.clone()];
        let mut seen = mtimes(&files);
        loop {
            tokio::time::sleep(RELOAD_CHECK).await;
            let Some(resolver) = weak.upgrade() else { return };
            let now = mtimes(&files);
            if now == seen {
                continue;
            }
            seen = now;
            match load_certified_key(&cert, &key) {
                Ok(ck) => {
                    if let Ok(mut g) = resolver.current.write() {
                        *g = Arc::new(ck);
                    }
                    tracing::info!(cert = %cert.display(), "Reloaded the TLS certificate.");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "The changed TLS certificate could not be loaded; still serving the previous one.")
                }
            }
        }
    });
    Ok(Arc::new(sc))
}

/// The collector a client certificate names: a SAN URI
/// `urn:linkmesh:collector:<instance_uid>`, or else a subject CN that is
/// the instance_uid. The certificate chain was verified in the handshake.
pub fn collector_id_of(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let from_san = parsed.subject_alternative_name().ok().flatten().and_then(|san| {
        san.value.general_names.iter().find_map(|n| match n {
            GeneralName::URI(u) => u.strip_prefix(COLLECTOR_URI_PREFIX).map(str::to_string),
            _ => None,
        })
    });
    let from_cn = || {
        parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
    };
    let id = from_san.or_else(from_cn)?;
    uuid::Uuid::parse_str(&id).ok().map(|u| u.hyphenated().to_string())
}

/// SAN URI prefix naming a collector in its client certificate.
pub const COLLECTOR_URI_PREFIX: &str = "urn:linkmesh:collector:";

/// A TCP listener that hands out finished TLS connections. Handshakes run
/// in their own tasks so one slow client never holds up the accept loop.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// The accept loop and handshakes run on `tasks`: at a stop the
    /// listening socket is closed, not left bound until the next accept.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>, tasks: &Tasks) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(256);
        let handshakes = tasks.clone();
        tasks.spawn("TLS accept loop", async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "Accepting a connection failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, conn_tx) = (acceptor.clone(), tx.clone());
                handshakes.spawn("TLS handshake", async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = conn_tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed."),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out."),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl TlsListener {
    /// The finished connections as a stream (for tonic's incoming).
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<TlsStream<TcpStream>, io::Error>> {
        futures::stream::unfold(self.rx, |mut rx| async move {
            rx.recv().await.map(|(tls, _)| (Ok(tls), rx))
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
