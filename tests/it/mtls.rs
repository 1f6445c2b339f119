//! The collector listener over TLS with client certificates (mTLS): a
//! verified certificate names the collector; with a bearer credential too,
//! both must name the same one.

use std::sync::Arc;

use linkmesh::proto::opamp_msgs as pb;
use linkmesh::proto::service::collector_service_client::CollectorServiceClient;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use serde_json::{json, Value};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::support::*;

struct Ca {
    pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        cert,
        key,
    }
}

/// (cert pem, key pem) signed by `ca`.
fn leaf(ca: &Ca, sans: Vec<SanType>) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn collector_cert(ca: &Ca, id: &str) -> (String, String) {
    leaf(
        ca,
        vec![SanType::URI(format!("urn:linkmesh:collector:{id}").try_into().unwrap())],
    )
}

async fn session(
    addr: std::net::SocketAddr,
    server_ca: &str,
    identity: Option<&(String, String)>,
    bearer: Option<&str>,
    uid: &str,
) -> Result<pb::ServerToAgent, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = CollectorServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let uid = uuid::Uuid::parse_str(uid).unwrap().as_bytes().to_vec();
    tx.send(pb::AgentToServer {
        instance_uid: uid,
        sequence_num: 1,
        capabilities: 1,
        agent_description: Some(Default::default()),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(b) = bearer {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {b}").parse().unwrap());
    }
    let mut stream = client
        .session(req)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    drop(tx);
    first.ok_or_else(|| "stream ended".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_identify_collectors() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca();
    let (cert, key) = leaf(&server_ca, vec![SanType::DnsName("localhost".try_into().unwrap())]);
    let client_ca = ca();
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), key).unwrap();
    std::fs::write(dir.path().join("clients.pem"), &client_ca.pem).unwrap();
    let mut config = test_config(dir.path());
    config.tls = Some(linkmesh::config::TlsConfig {
        cert_file: dir.path().join("cert.pem"),
        key_file: dir.path().join("key.pem"),
        client_ca_file: Some(dir.path().join("clients.pem")),
    });
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (web_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(linkmesh::run_with_store(
        config,
        open_store(dir.path()).await,
        Arc::new(linkmesh::clock::SystemClock),
        linkmesh::Listeners { http, grpc },
        async move {
            let _ = stopped.await;
        },
    ));

    // Enroll two collectors over HTTPS.
    let web = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(server_ca.pem.as_bytes()).unwrap())
        .resolve("localhost", web_addr)
        .cookie_store(true)
        .default_headers(
            [(
                reqwest::header::ORIGIN,
                format!("https://localhost:{}", web_addr.port()).parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", web_addr.port());
    let end = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while web.get(format!("{base}/readyz")).send().await.is_err() {
        assert!(tokio::time::Instant::now() < end, "HTTPS never came up");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = web
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username":"admin","password":ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, token) = enrollment_token(&base, &web, json!({"name":"mtls"})).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let e: Value = web
            .post(format!("{base}/api/v1/enroll"))
            .json(&json!({"token": token}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push((
            e["collector_id"].as_str().unwrap().to_string(),
            e["credential"].as_str().unwrap().to_string(),
        ));
    }
    let ((a, a_cred), (b, _)) = (ids[0].clone(), ids[1].clone());
    let cert_a = collector_cert(&client_ca, &a);
    let cert_b = collector_cert(&client_ca, &b);

    // The certificate alone identifies the collector; with the matching
    // credential too; without a certificate, the credential does.
    assert!(session(grpc_addr, &server_ca.pem, Some(&cert_a), None, &a)
        .await
        .is_ok());
    assert!(session(grpc_addr, &server_ca.pem, Some(&cert_a), Some(&a_cred), &a)
        .await
        .is_ok());
    assert!(session(grpc_addr, &server_ca.pem, None, Some(&a_cred), &a)
        .await
        .is_ok());
    // Another collector's certificate is refused.
    let err = session(grpc_addr, &server_ca.pem, Some(&cert_b), Some(&a_cred), &a)
        .await
        .unwrap_err();
    assert!(
        err.contains("Unauthenticated") && err.contains("another collector"),
        "{err}"
    );
    // So is a certificate from an unknown CA (in the handshake), and one
    // naming no enrolled collector.
    let stranger = collector_cert(&ca(), &a);
    assert!(session(grpc_addr, &server_ca.pem, Some(&stranger), None, &a)
        .await
        .is_err());
    let nobody = collector_cert(&client_ca, &uuid::Uuid::now_v7().to_string());
    let err = session(grpc_addr, &server_ca.pem, Some(&nobody), None, &a)
        .await
        .unwrap_err();
    assert!(err.contains("Unauthenticated"), "{err}");
    // No certificate, no credential: refused.
    assert!(session(grpc_addr, &server_ca.pem, None, None, &a)
        .await
        .unwrap_err()
        .contains("Unauthenticated"));

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
