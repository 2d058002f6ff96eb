//! Bearer-token authentication on both OTLP transports, with the real binary: requests
//! without a valid token are refused (401 / UNAUTHENTICATED) before their body is
//! decoded and counted as `unauthenticated`; rotating the tokens file takes effect
//! without a restart.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use sloxide::fixture::{self, Shape};
use tonic::Code;

use crate::bad_input::refused;
use crate::harness::{Daemon, config};

const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

fn body() -> Vec<u8> {
    fixture::traces(&Shape {
        resources: 1,
        per_resource: 10,
        ..Shape::default()
    })
    .encode_to_vec()
}

async fn grpc(d: &Daemon, token: Option<&str>, body: Vec<u8>) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", d.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let mut request = tonic::Request::new(Bytes::from(body));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", token.parse().unwrap());
    }
    client
        .unary(
            request,
            http::uri::PathAndQuery::from_static(TRACE_EXPORT),
            sloxide::ingest::grpc::RawCodec,
        )
        .await
        .map(|_| ())
}

async fn http(d: &Daemon, token: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", d.http))
        .header("content-type", "application/x-protobuf")
        .body(body);
    if let Some(token) = token {
        request = request.header("authorization", token);
    }
    request.send().await.unwrap()
}

/// A POST of JSON to the gRPC port, by an HTTP/2 client that does not speak gRPC: the
/// answer's HTTP status, `grpc-status` and `grpc-message`.
async fn not_grpc(d: &Daemon, token: Option<&str>) -> (u16, String, String) {
    let tcp = tokio::net::TcpStream::connect(d.grpc).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::post(format!("http://{}{TRACE_EXPORT}", d.grpc))
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", token);
    }
    let (response, mut send) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    send.send_data(Bytes::from_static(b"{}"), true).unwrap();
    let response = response.await.unwrap();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
    };
    (
        response.status().as_u16(),
        header("grpc-status"),
        header("grpc-message"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_requests_with_a_token_in_force_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# rotated weekly\nfirst-token\n").unwrap();
    let d = Daemon::start(&config(&format!(
        "auth:\n  bearer_tokens_file: {}\n",
        tokens.display()
    )));

    // No token, a wrong one, the wrong scheme: refused before the body is looked at
    // (a garbage body is 401, not 400).
    for token in [None, Some("Bearer wrong"), Some("Basic first-token")] {
        let status = grpc(&d, token, body()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
        let response = http(&d, token, b"not protobuf".to_vec()).await;
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(
            response.headers().get("www-authenticate").unwrap(),
            "Bearer"
        );
    }
    assert_eq!(refused(&d, "grpc", "unauthenticated").await, Some(3.0));
    assert_eq!(refused(&d, "http", "unauthenticated").await, Some(3.0));
    assert_eq!(refused(&d, "http", "decode").await, Some(0.0));

    // Not gRPC on the gRPC port: without a token, refused as unauthenticated first; with
    // one, 415 and UNIMPLEMENTED, told to send gRPC.
    let (status, code, _) = not_grpc(&d, None).await;
    assert_eq!((status, code.as_str()), (200, "16"));
    let (status, code, message) = not_grpc(&d, Some("Bearer first-token")).await;
    assert_eq!((status, code.as_str()), (415, "12"), "{message}");
    assert!(message.contains("send%20application/grpc"), "{message}");
    assert_eq!(refused(&d, "grpc", "unauthenticated").await, Some(4.0));
    assert_eq!(refused(&d, "grpc", "unsupported").await, Some(1.0));

    grpc(&d, Some("Bearer first-token"), body()).await.unwrap();
    let response = http(&d, Some("bearer first-token"), body()).await;
    assert_eq!(response.status(), 200);
    let accepted = |transport| {
        let d = &d;
        async move {
            d.metric(
                "sloxide_receiver_accepted_spans_total",
                &[("transport", transport)],
            )
            .await
        }
    };
    assert_eq!(accepted("grpc").await, Some(10.0));
    assert_eq!(accepted("http").await, Some(10.0));

    // Rotation: the new file is read within a second or two; the old token stops.
    std::fs::write(&tokens, "second-token\n").unwrap();
    let mut rotated = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if grpc(&d, Some("Bearer second-token"), body()).await.is_ok() {
            rotated = true;
            break;
        }
    }
    assert!(rotated, "the rotated token was not accepted");
    let status = grpc(&d, Some("Bearer first-token"), body())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        http(&d, Some("Bearer first-token"), body()).await.status(),
        401
    );
    assert_eq!(
        http(&d, Some("Bearer second-token"), body()).await.status(),
        200
    );
    // Health and metrics need no token.
    assert_eq!(d.get("/healthz").await.0, 200);
}

/// The 401's challenge names the configured scheme; tokens in a header of their own (an
/// API-key header) have no scheme to name, so none is sent. `/metrics` does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_challenge_names_the_configured_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "k1\n").unwrap();
    let d = Daemon::start(&config(&format!(
        "auth:\n  bearer_tokens_file: {0}\n  scheme: Token\nmetrics:\n  auth:\n    bearer_tokens_file: {0}\n    header: X-Api-Key\n    scheme: \"\"\n",
        tokens.display()
    )));
    let response = http(&d, Some("Bearer k1"), body()).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers().get("www-authenticate").unwrap(), "Token");
    assert_eq!(http(&d, Some("Token k1"), body()).await.status(), 200);

    let metrics = format!("http://{}/metrics", d.metrics);
    let response = reqwest::get(&metrics).await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("www-authenticate").is_none());
    let response = reqwest::Client::new()
        .get(&metrics)
        .header("x-api-key", "k1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Browsers cannot send a bearer token, but they prompt for HTTP Basic credentials when
/// challenged: the status pages take a token as the password (any user name) and
/// challenge for Basic first. `/metrics` stays bearer-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_pages_take_a_token_as_a_basic_password() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "page-token\n").unwrap();
    let d = Daemon::start(&config(&format!(
        "metrics:\n  auth:\n    bearer_tokens_file: {}\n",
        tokens.display()
    )));
    let client = reqwest::Client::new();
    let page = format!("http://{}/", d.metrics);
    let metrics = format!("http://{}/metrics", d.metrics);

    let response = client.get(&page).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let challenges: Vec<_> = response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        challenges,
        ["Basic realm=\"sloxide\", charset=\"UTF-8\"", "Bearer"]
    );

    for (user, password, status) in [
        ("sre", "page-token", 200),
        ("", "page-token", 200),
        ("sre", "wrong", 401),
        ("page-token", "", 401),
    ] {
        let response = client
            .get(&page)
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{user}:{password}");
        if status == 200 {
            assert!(response.text().await.unwrap().contains("<html"));
        }
    }
    let response = client
        .get(&page)
        .bearer_auth("page-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // /metrics: the bearer token only, and the bearer challenge only.
    let response = client
        .get(&metrics)
        .basic_auth("sre", Some("page-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .collect::<Vec<_>>(),
        ["Bearer"]
    );
    let response = client
        .get(&metrics)
        .bearer_auth("page-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
