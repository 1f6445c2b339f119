//! HTTPS on the web listener, and certificate renewal without a restart.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

use super::support::*;

/// A CA and a `localhost` certificate it signed: (ca pem, cert pem, key pem).
fn issue() -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    (ca_cert.pem(), leaf.pem(), leaf_key.serialize_pem())
}

fn write_pair(dir: &Path, cert: &str, key: &str) {
    // Write-then-rename, as certificate tools do, so a reader never sees
    // half a file.
    for (name, body) in [("cert.pem", cert), ("key.pem", key)] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

fn client_trusting(ca: &str, addr: std::net::SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_and_picks_up_a_renewed_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (ca1, cert1, key1) = issue();
    write_pair(dir.path(), &cert1, &key1);
    let mut config = test_config(dir.path());
    config.tls = Some(linkmesh::config::TlsConfig {
        cert_file: dir.path().join("cert.pem"),
        key_file: dir.path().join("key.pem"),
        client_ca_file: None,
    });
    let store = open_store(dir.path()).await;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(linkmesh::run_with_store(
        config,
        store,
        std::sync::Arc::new(linkmesh::clock::SystemClock),
        linkmesh::Listeners {
            http,
            grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        },
        async move {
            let _ = rx.await;
        },
    ));
    let url = format!("https://localhost:{}/readyz", addr.port());
    let old = client_trusting(&ca1, addr);
    poll_until("HTTPS to answer 200", SETTLE, async || {
        match old.get(&url).send().await {
            Ok(r) if r.status() == 200 => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;

    // Renew with a certificate from another CA: new connections get it.
    let (ca2, cert2, key2) = issue();
    write_pair(dir.path(), &cert2, &key2);
    let new = client_trusting(&ca2, addr);
    // A fresh client each time: no pooled connection from before.
    let r = poll_until("the renewed certificate served", SETTLE, async || {
        client_trusting(&ca2, addr).get(&url).send().await
    })
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(new.get(&url).send().await.unwrap().status(), 200);
    assert!(
        client_trusting(&ca1, addr).get(&url).send().await.is_err(),
        "the old certificate is still served"
    );
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}
