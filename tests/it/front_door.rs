//! The front door for standard agents, end to end over real loopback
//! sockets: first contact is rate limited per address on every transport,
//! revoking a token closes the sessions on its path, an HTTP agent that
//! keeps a bad uid enrolls nothing, refused agents are never shown
//! connected, a storage outage is a 503 that names no internals, and the
//! simulator binary's `--available-components` leads to `incompatible`.

use std::collections::BTreeSet;
use std::time::Duration;

use linkmesh::proto::opamp_msgs as pb;
use linkmesh::proto::service::collector_service_client::CollectorServiceClient;
use linkmesh::proto::service::EnrollRequest as GrpcEnroll;
use linkmesh::storage::Table;
use prost::Message;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;

use super::support::*;

/// An agent's first message: its uid, status and remote config.
fn hello(uid: &[u8]) -> pb::AgentToServer {
    pb::AgentToServer {
        instance_uid: uid.to_vec(),
        sequence_num: 1,
        capabilities: 0x1 | 0x2,
        agent_description: Some(Default::default()),
        ..Default::default()
    }
}

/// One OpAMP HTTP poll from `client`.
async fn poll_from(client: &reqwest::Client, base: &str, bearer: &str, msg: &pb::AgentToServer) -> reqwest::Response {
    client
        .post(format!("{base}/v1/opamp"))
        .bearer_auth(bearer)
        .header("content-type", "application/x-protobuf")
        .body(msg.encode_to_vec())
        .send()
        .await
        .unwrap()
}

async fn poll(base: &str, bearer: &str, msg: &pb::AgentToServer) -> reqwest::Response {
    poll_from(&reqwest::Client::new(), base, bearer, msg).await
}

async fn reply(r: reqwest::Response) -> pb::ServerToAgent {
    assert_eq!(r.status(), 200);
    pb::ServerToAgent::decode(r.bytes().await.unwrap()).unwrap()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The OpAMP WebSocket upgrade with `bearer`: the socket, or the HTTP
/// answer that refused it (status, Retry-After, body).
async fn ws(base: &str, bearer: &str) -> Result<Ws, (u16, Option<String>, String)> {
    let url = format!("{}/v1/opamp", base.replacen("http", "ws", 1));
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string()),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("websocket upgrade failed: {e}"),
    }
}

/// Send one OpAMP message on a WebSocket and read the answer.
async fn ws_exchange(socket: &mut Ws, msg: &pb::AgentToServer) -> pb::ServerToAgent {
    use futures::{SinkExt, StreamExt};
    let mut frame = vec![0u8];
    msg.encode(&mut frame).unwrap();
    socket.send(tungstenite::Message::Binary(frame.into())).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let next = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("no answer on the websocket");
        match next {
            Some(Ok(tungstenite::Message::Binary(data))) => {
                assert_eq!(data[0], 0, "OpAMP websocket header");
                return pb::ServerToAgent::decode(&data[1..]).unwrap();
            }
            Some(Ok(_)) => continue,
            other => panic!("the websocket ended without an answer: {other:?}"),
        }
    }
}

async fn token_uses(base: &str, api: &str, id: &str) -> u64 {
    let tokens = get_json(base, api, "/api/v1/enrollment-tokens").await;
    tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap()["uses"]
        .as_u64()
        .unwrap()
}

/// No storage internals in what a collector is told.
fn assert_no_internals(what: &str, text: &str) {
    for leak in ["test fault", "Collector", "Enrollment", "redb", "reads of"] {
        assert!(!text.contains(leak), "{what} names storage internals ({leak}): {text}");
    }
}

/// Refused first contacts (here: a guessed enrollment token) use up the
/// address's budget, which `POST /api/v1/enroll` shares; then every path
/// refuses an enrollment token from that address with the time to wait —
/// OpAMP HTTP and the WebSocket upgrade with 429 + Retry-After, gRPC with
/// RESOURCE_EXHAUSTED — while a collector with its own credential keeps
/// connecting, and another address still enrolls.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_first_contacts_are_rate_limited_per_address_on_every_transport() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auth.enroll_attempts_per_minute = 2;
    let s = start(open_store(dir.path()).await, config).await;
    let admin = admin(&s.base).await;
    let api = api_token(&s.base, &admin).await;
    let (token_id, token) = enrollment_token(&s.base, &admin, json!({"name":"edge"})).await;
    let r = enroll(&s.base, &token, None).await;
    assert_eq!(r.status(), 201);
    let e: Value = r.json().await.unwrap();
    let (id, cred) = (
        e["collector_id"].as_str().unwrap().to_string(),
        e["credential"].as_str().unwrap().to_string(),
    );

    let guessed = format!("lme_{}_guess", "0".repeat(32));
    for _ in 0..2 {
        let r = poll(&s.base, &guessed, &hello(uuid::Uuid::now_v7().as_bytes())).await;
        assert_eq!(r.status(), 401);
    }

    let fresh = uuid::Uuid::now_v7();
    let r = poll(&s.base, &token, &hello(fresh.as_bytes())).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&wait), "Retry-After {wait}");
    assert!(r.text().await.unwrap().contains("retry in"));

    let Err((status, retry_after, body)) = ws(&s.base, &token).await else {
        panic!("the upgrade was accepted");
    };
    assert_eq!(status, 429, "{body}");
    assert!(retry_after.is_some_and(|v| v.parse::<u64>().unwrap() >= 1));

    let err = grpc_session(&s.grpc, &token, fresh.as_bytes()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("retry in"), "{}", err.message());
    assert!(err.metadata().get("retry-after").is_some());

    let mut client = CollectorServiceClient::connect(s.grpc.clone()).await.unwrap();
    let err = client
        .enroll(GrpcEnroll {
            token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert_eq!(enroll(&s.base, &token, None).await.status(), 429);
    assert_eq!(
        token_uses(&s.base, &api, &token_id).await,
        1,
        "nothing enrolled while limited"
    );

    // Its own credential is never limited, on any transport.
    let (tx, mut stream) = grpc_session(&s.grpc, &cred, &uid_bytes(&id)).await.unwrap();
    assert!(stream.message().await.unwrap().is_some());
    drop((tx, stream));
    assert_eq!(poll(&s.base, &cred, &hello(&uid_bytes(&id))).await.status(), 200);
    assert!(ws(&s.base, &cred).await.is_ok());

    // Another address has a budget of its own.
    let elsewhere = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let first = reply(poll_from(&elsewhere, &s.base, &token, &hello(fresh.as_bytes())).await).await;
    assert_eq!(first.instance_uid, fresh.as_bytes().to_vec());
    assert_eq!(token_uses(&s.base, &api, &token_id).await, 2);
    s.stop().await;
}

/// Revoking a token (through another instance) closes the sessions still
/// on its path: a gRPC stream is told the token was revoked and ends, an
/// HTTP poller is shown disconnected at once and refused with the reason;
/// a collector enrolled with the same token that has its own credential
/// keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_a_token_closes_the_sessions_on_its_path_only() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path()).await;
    let admin_a = admin(&a.base).await;
    let api = api_token(&a.base, &admin_a).await;
    let (token_id, token) = enrollment_token(&a.base, &admin_a, json!({"name":"edge"})).await;
    let e: Value = enroll(&a.base, &token, None).await.json().await.unwrap();
    let own_id = e["collector_id"].as_str().unwrap().to_string();
    let cred = e["credential"].as_str().unwrap().to_string();
    let (own_tx, mut own) = grpc_session(&a.grpc, &cred, &uid_bytes(&own_id)).await.unwrap();
    assert!(own.message().await.unwrap().is_some());

    let streamed = uuid::Uuid::now_v7();
    let (_token_tx, mut on_token) = grpc_session(&a.grpc, &token, streamed.as_bytes()).await.unwrap();
    assert!(on_token.message().await.unwrap().is_some());
    let polled = uuid::Uuid::now_v7();
    reply(poll(&a.base, &token, &hello(polled.as_bytes())).await).await;
    wait_summary(&a.base, &api, |v| v["connected"] == 3).await;

    let admin_b = admin(&b.base).await;
    let r = admin_b
        .post(format!("{}/api/v1/enrollment-tokens/{token_id}/revoke", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let told = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match on_token.message().await {
                Ok(Some(m)) => match m.error_response {
                    Some(e) => return e.error_message,
                    None => continue,
                },
                other => panic!("the stream ended without saying why: {other:?}"),
            }
        }
    })
    .await
    .expect("the token-path stream was not told");
    assert!(told.contains("revoked"), "{told}");
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(_)) = on_token.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "the token-path stream stayed open");

    let path = format!("/api/v1/collectors/{polled}");
    poll_json(
        "the HTTP agent shown disconnected",
        async || get_json(&a.base, &api, &path).await,
        |d| d["connected"] == false,
    )
    .await;
    let r = poll(&a.base, &token, &hello(polled.as_bytes())).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("revoked"));

    // The collector on its own credential is still held and answered.
    own_tx
        .send(pb::AgentToServer {
            instance_uid: uid_bytes(&own_id),
            sequence_num: 2,
            capabilities: 0x1 | 0x2,
            ..Default::default()
        })
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), own.message())
        .await
        .expect("no answer on the credential's stream");
    assert!(answer.unwrap().is_some());
    let d = get_json(&a.base, &api, &format!("/api/v1/collectors/{own_id}")).await;
    assert_eq!(d["connected"], true, "{d}");
    wait_summary(&a.base, &api, |v| v["connected"] == 1).await;
    a.stop().await;
    b.stop().await;
}

/// An HTTP agent with an empty or malformed uid that never adopts the one
/// it is given: each poll is told a fresh uid, and nothing is enrolled (no
/// use counted, no collector). Once it polls with a given uid it is
/// enrolled and gets its config.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http_agent_that_keeps_a_bad_uid_enrolls_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let admin = admin(&s.base).await;
    let api = api_token(&s.base, &admin).await;
    set_default(&s.base, &api, "receivers:\n  otlp: {}\n").await;
    let (token_id, token) = enrollment_token(&s.base, &admin, json!({"name":"http","max_uses":1})).await;
    let mut given = BTreeSet::new();
    for bad in [
        vec![],
        vec![0u8; 16],
        vec![1, 2, 3],
        vec![],
        vec![0u8; 16],
        vec![7u8; 17],
    ] {
        let r = reply(poll(&s.base, &token, &hello(&bad)).await).await;
        let uid = r.agent_identification.expect("a uid to adopt").new_instance_uid;
        assert_eq!(uid.len(), 16);
        assert!(r.remote_config.is_none(), "no config before it is enrolled");
        given.insert(uid);
    }
    assert_eq!(given.len(), 6, "a fresh uid for every poll");
    assert_eq!(token_uses(&s.base, &api, &token_id).await, 0);
    assert_eq!(summary(&s.base, &api).await["total"], 0, "no collector per poll");

    let uid = given.first().unwrap().clone();
    let r = reply(poll(&s.base, &token, &hello(&uid)).await).await;
    assert_eq!(r.instance_uid, uid);
    assert!(r.agent_identification.is_none());
    assert!(r.remote_config.is_some(), "enrolled, it gets its config in the reply");
    assert_eq!(token_uses(&s.base, &api, &token_id).await, 1);
    let id = uuid::Uuid::from_slice(&uid).unwrap();
    let d = get_json(&s.base, &api, &format!("/api/v1/collectors/{id}")).await;
    assert_eq!(d["connected"], true, "{d}");
    s.stop().await;
}

/// An HTTP agent refused for presenting another collector's uid with its
/// credential is never shown connected; with its own uid it connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_http_agent_is_never_shown_connected() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let admin = admin(&s.base).await;
    let api = api_token(&s.base, &admin).await;
    let (id, cred) = enroll_one(&s.base, &admin).await;
    let r = poll(&s.base, &cred, &hello(&[9u8; 16])).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("does not belong"));
    let d = get_json(&s.base, &api, &format!("/api/v1/collectors/{id}")).await;
    assert_eq!(d["connected"], false, "{d}");
    assert_eq!(summary(&s.base, &api).await["connected"], 0);

    reply(poll(&s.base, &cred, &hello(&uid_bytes(&id))).await).await;
    wait_summary(&s.base, &api, |v| v["connected"] == 1).await;
    s.stop().await;
}

/// With the store unreachable, agents are told to come back later (503 /
/// UNAVAILABLE, before and after the WebSocket upgrade), never told what
/// failed inside, and not counted against their address's enrollment
/// budget; once the store answers they connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storage_outage_is_a_503_that_names_no_internals() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auth.enroll_attempts_per_minute = 1;
    let s = start(open_store(dir.path()).await, config).await;
    let admin = admin(&s.base).await;
    let (id, cred) = enroll_one(&s.base, &admin).await;
    let (_, token) = enrollment_token(&s.base, &admin, json!({"name":"edge"})).await;

    s.store.fail_reads_of(Some(Table::CollectorCredentials));
    let Err((status, _, body)) = ws(&s.base, &cred).await else {
        panic!("the upgrade was accepted");
    };
    assert_eq!(status, 503, "{body}");
    assert_no_internals("the upgrade refusal", &body);
    let r = poll(&s.base, &cred, &hello(&uid_bytes(&id))).await;
    assert_eq!(r.status(), 503);
    assert_no_internals("the OpAMP HTTP refusal", &r.text().await.unwrap());
    let err = grpc_session(&s.grpc, &cred, &uid_bytes(&id)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_no_internals("the gRPC refusal", err.message());

    s.store.fail_reads_of(Some(Table::EnrollmentTokens));
    for _ in 0..3 {
        let Err((status, _, body)) = ws(&s.base, &token).await else {
            panic!("the upgrade was accepted");
        };
        assert_eq!(status, 503, "{body}");
        assert_no_internals("the upgrade refusal", &body);
    }

    // Past the upgrade, enrolling the first message's uid fails.
    s.store.fail_reads_of(Some(Table::Collectors));
    let mut socket = ws(&s.base, &token).await.unwrap();
    let uid = uuid::Uuid::now_v7();
    let refusal = ws_exchange(&mut socket, &hello(uid.as_bytes())).await;
    let e = refusal.error_response.expect("an OpAMP error response");
    assert_eq!(e.r#type, pb::ServerErrorResponseType::Unavailable as i32);
    assert_no_internals("the OpAMP error response", &e.error_message);

    // The store is back: none of that counted against the address.
    s.store.fail_reads_of(None);
    let mut socket = ws(&s.base, &token).await.unwrap();
    let first = ws_exchange(&mut socket, &hello(uid.as_bytes())).await;
    assert!(first.error_response.is_none(), "{first:?}");
    assert_eq!(first.instance_uid, uid.as_bytes().to_vec());
    assert!(ws(&s.base, &cred).await.is_ok());
    s.stop().await;
}

/// The simulator binary, given `--available-components`, reports them:
/// a config naming a type its collectors lack is not pushed, and the API
/// shows them `incompatible`, naming the missing types.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sim_binary_reports_available_components() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let admin = admin(&s.base).await;
    let api = api_token(&s.base, &admin).await;
    set_default(
        &s.base,
        &api,
        "receivers:\n  otlp: {}\nexporters:\n  kafka/primary: {}\n  debug: {}\n",
    )
    .await;
    let (_, token) = enrollment_token(&s.base, &admin, json!({"name":"sim"})).await;
    let mut sim = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkmesh-sim"))
        .args(["--server", &s.base, "--grpc", &s.grpc, "--transport", "grpc"])
        .args(["--collectors", "2", "--heartbeat", "1s", "--hold", "10m"])
        .args(["--available-components", "receivers=otlp;exporters=debug,otlphttp"])
        .env("LINKMESH_SIM_ENROLLMENT_TOKEN", &token)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_summary(&s.base, &api, |v| {
        v["connected"] == 2 && v["config"]["incompatible"] == 2
    })
    .await;
    let list = get_json(&s.base, &api, "/api/v1/collectors").await;
    for c in list["items"].as_array().unwrap() {
        assert_eq!(c["config_status"], "incompatible", "{c}");
        let why = c["config_error"].as_str().unwrap();
        assert!(why.contains("exporters/kafka"), "{why}");
        assert!(!why.contains("debug") && !why.contains("otlp"), "{why}");
        let d = get_json(
            &s.base,
            &api,
            &format!("/api/v1/collectors/{}", c["id"].as_str().unwrap()),
        )
        .await;
        assert_eq!(
            d["status"]["available_components"]["components"]["exporters"],
            json!(["debug", "otlphttp"]),
            "{d}"
        );
    }
    sim.kill().await.unwrap();
    s.stop().await;
}

/// `linkmesh_collector_bodies_decoded_total` of `endpoint` and `outcome`,
/// from the instance's `/metrics` (0 before the first one).
async fn bodies_decoded(base: &str, endpoint: &str, outcome: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("linkmesh_collector_bodies_decoded_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// On both collector endpoints that take a body, OpAMP over HTTP and OTLP
/// `/v1/metrics`, who is calling is settled before anything the caller sent
/// is inflated or decoded: without a credential, with a guessed one or one
/// off by a character, a gzip bomb, garbage and a well-formed message all
/// get 401, and the server's count of decoded bodies stays at zero. The
/// collector's own credential then gets each body decoded and answered on
/// its merits (413 naming the limit, 400, 200), and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_unknown_senders_are_refused_before_they_are_inflated_or_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_request_bytes = 64 * 1024;
    let s = start(open_store(dir.path()).await, config).await;
    let admin = admin(&s.base).await;
    let (_, token) = enrollment_token(&s.base, &admin, json!({"name": "bodies"})).await;
    let uid = uuid::Uuid::now_v7();
    let e: Value = enroll(&s.base, &token, Some(&uid.to_string()))
        .await
        .json()
        .await
        .unwrap();
    let credential = e["credential"].as_str().unwrap().to_string();
    let mut off_by_one = credential.clone();
    let last = off_by_one.pop().unwrap();
    off_by_one.push(if last == 'a' { 'b' } else { 'a' });

    // 16 MiB of zeros in about 16 KiB: far past the 64 KiB limit once
    // inflated, well within it as sent.
    let bomb = gzip(&vec![0u8; 16 << 20]);
    assert!(bomb.len() < 64 * 1024);
    let garbage: Vec<u8> = (0..32 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let opamp_ok = gzip(&hello(uid.as_bytes()).encode_to_vec());
    let otlp_ok = gzip(b"{}");
    let endpoints = [
        ("/v1/opamp", "opamp_http", "application/x-protobuf", &opamp_ok),
        ("/v1/metrics", "otlp_metrics", "application/json", &otlp_ok),
    ];
    let http = reqwest::Client::new();
    let send = async |path: &str, content_type: &str, bearer: Option<&str>, body: &[u8]| {
        let mut r = http
            .post(format!("{}{path}", s.base))
            .header("content-type", content_type)
            .header("content-encoding", "gzip")
            .body(body.to_vec());
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    };

    for (path, _, content_type, ok) in endpoints {
        for bearer in [
            None,
            Some("nope"),
            Some("lmc_guessed_guessed"),
            Some(off_by_one.as_str()),
        ] {
            for (what, body) in [("a gzip bomb", &bomb), ("garbage", &garbage), ("a valid body", ok)] {
                let (status, text) = send(path, content_type, bearer, body).await;
                assert_eq!(status, 401, "{path} with {what} and bearer {bearer:?}: {text}");
            }
        }
    }
    for (_, endpoint, _, _) in endpoints {
        for outcome in ["ok", "refused"] {
            assert_eq!(
                bodies_decoded(&s.base, endpoint, outcome).await,
                0,
                "{endpoint}: a body of an unknown sender was decoded"
            );
        }
    }

    // The collector itself: each body is decoded and judged.
    for (path, endpoint, content_type, ok) in endpoints {
        let (status, text) = send(path, content_type, Some(&credential), &bomb).await;
        assert_eq!(status, 413, "{path}: {text}");
        assert!(
            text.contains("exceeds 65536 bytes (server.max_request_bytes)"),
            "{path}: the 413 names the limit: {text}"
        );
        let (status, text) = send(path, content_type, Some(&credential), &garbage).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("invalid gzip body"), "{path}: {text}");
        let (status, text) = send(path, content_type, Some(&credential), ok).await;
        assert_eq!(status, 200, "{path}: {text}");
        assert_eq!(bodies_decoded(&s.base, endpoint, "refused").await, 2, "{endpoint}");
        assert_eq!(bodies_decoded(&s.base, endpoint, "ok").await, 1, "{endpoint}");
    }
    s.stop().await;
}

/// gRPC messages as raw bytes, so a test can put on the stream what no
/// honest client would (garbage, an oversized message).
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = prost::bytes::Buf::remaining(src);
        Ok(Some(prost::bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// Open a gRPC session with `bearer` whose first message is `first`, as
/// raw bytes: the refusal, or the server's first answer (`None`: the
/// server ended the stream without one).
async fn raw_grpc_session(grpc: &str, bearer: Option<&str>, first: Vec<u8>) -> Result<Option<Vec<u8>>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(grpc.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    // The request stream stays open (as a collector's does) until the
    // server answers or ends it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    tx.send(first).await.unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(b) = bearer {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {b}").parse().unwrap());
    }
    let path = http::uri::PathAndQuery::from_static("/linkmesh.v1.CollectorService/Session");
    let mut answers = client.streaming(req, path, RawCodec).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(20), answers.message())
        .await
        .expect("no answer and no end on the gRPC stream");
    drop(tx);
    first
}

/// On the streaming transports, gRPC and OpAMP over WebSocket, who is
/// calling is settled from the request's headers before any message is
/// read: an unknown sender's first message, oversized, garbage or well
/// formed, gets the same refusal (gRPC UNAUTHENTICATED; HTTP 401 to the
/// WebSocket upgrade, so no frame is ever read), never a decode error or a
/// size limit, which would mean it was read. The collector's own
/// credential then gets each message judged on its merits: the garbage and
/// the oversized one end the session without an answer, the hello is
/// answered. (OpAMP HTTP and /v1/metrics: the test above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_unknown_senders_are_refused_before_their_first_message_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_request_bytes = 64 * 1024;
    let s = start(open_store(dir.path()).await, config).await;
    let admin = admin(&s.base).await;
    let (id, credential) = enroll_one(&s.base, &admin).await;
    let uid = uid_bytes(&id);
    let mut off_by_one = credential.clone();
    let last = off_by_one.pop().unwrap();
    off_by_one.push(if last == 'a' { 'b' } else { 'a' });
    let guessed_enrollment = format!("lme_{}_guessed", "0".repeat(32));

    // Twice the size limit; protobuf of the wrong wire type for field 2
    // (sequence_num is a varint, this says length-delimited).
    let oversized = hello(&uid)
        .encode_to_vec()
        .into_iter()
        .chain(std::iter::repeat_n(0u8, 128 * 1024))
        .collect::<Vec<u8>>();
    let garbage: Vec<u8> = [0x12, 0xff, 0xff, 0x03]
        .into_iter()
        .chain((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8))
        .collect();
    let valid = hello(&uid).encode_to_vec();
    assert!(pb::AgentToServer::decode(garbage.as_slice()).is_err());
    let bodies = [
        ("an oversized message", &oversized),
        ("garbage", &garbage),
        ("a valid hello", &valid),
    ];
    let strangers = [
        None,
        Some("nope"),
        Some("lmc_guessed_guessed"),
        Some(guessed_enrollment.as_str()),
        Some(off_by_one.as_str()),
    ];

    for bearer in strangers {
        for (what, body) in bodies {
            let refused = raw_grpc_session(&s.grpc, bearer, body.clone()).await;
            let code = refused.as_ref().map_err(|st| st.code());
            assert_eq!(
                code.err(),
                Some(tonic::Code::Unauthenticated),
                "gRPC, {what}, bearer {bearer:?}: {refused:?}"
            );
        }
        if let Some(b) = bearer {
            let (status, _, text) = ws(&s.base, b).await.map(|_| ()).unwrap_err();
            assert_eq!(status, 401, "WebSocket upgrade with bearer {b:?}: {text}");
        }
    }
    let ws_url = format!("{}/v1/opamp", s.base.replacen("http", "ws", 1));
    match tokio_tungstenite::connect_async(ws_url).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401, "WebSocket upgrade without a bearer"),
        other => panic!(
            "WebSocket upgrade without a bearer: {:?}",
            other.map(|(_, r)| r.status())
        ),
    }

    // The collector itself: each message is read and judged.
    for (what, body) in [("an oversized message", &oversized), ("garbage", &garbage)] {
        let ended = raw_grpc_session(&s.grpc, Some(&credential), body.clone()).await;
        assert!(
            matches!(ended, Ok(None))
                || ended
                    .as_ref()
                    .is_err_and(|st| st.code() != tonic::Code::Unauthenticated),
            "gRPC with the credential, {what}: the session ends without an answer: {ended:?}"
        );
        use futures::{SinkExt, StreamExt};
        let mut socket = ws(&s.base, &credential).await.unwrap();
        let mut frame = vec![0u8];
        frame.extend_from_slice(body);
        socket.send(tungstenite::Message::Binary(frame.into())).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("the WebSocket neither answered nor closed");
        assert!(
            !matches!(next, Some(Ok(tungstenite::Message::Binary(_)))),
            "WebSocket with the credential, {what}: closed without an answer: {next:?}"
        );
    }
    let answer = raw_grpc_session(&s.grpc, Some(&credential), valid.clone())
        .await
        .unwrap()
        .expect("the collector's hello is answered");
    assert_eq!(pb::ServerToAgent::decode(answer.as_slice()).unwrap().instance_uid, uid);
    let mut socket = ws(&s.base, &credential).await.unwrap();
    assert_eq!(ws_exchange(&mut socket, &hello(&uid)).await.instance_uid, uid);
    s.stop().await;
}
