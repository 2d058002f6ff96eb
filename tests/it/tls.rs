//! TLS on the three ports with real clients: certificates made at test time (rcgen),
//! the Python OTel exporters, Prometheus over https, mutual TLS, and certificates
//! replaced on disk without a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::e2e::{python_available, python_send, python_try_send};
use crate::harness::{Daemon, config, require};
use crate::prometheus::{Prometheus, prometheus_on_path};

/// A CA and what it signed, as PEM files in a directory of their own.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    /// The CA certificate (DER).
    pub ca_der: CertificateDer<'static>,
}

/// A leaf certificate: its DER, and its PEM certificate and key.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    /// A new CA named `name`; its certificate is written to `ca.pem`.
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Self {
            ca_der: cert.der().clone(),
            ca: Issuer::new(params, key),
            dir,
        }
    }

    /// Path of a file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A leaf certificate for localhost and 127.0.0.1 (server), or a client one.
    pub fn leaf(&self, server: bool) -> Leaf {
        let names = if server {
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
        } else {
            vec!["client.test".to_owned()]
        };
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            if server { "sloxide test" } else { "client" },
        );
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes a server certificate to `server.pem` and `server.key` and returns it.
    pub fn server(&self) -> Leaf {
        let leaf = self.leaf(true);
        std::fs::write(self.path("server.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(self.path("server.key"), &leaf.key_pem).unwrap();
        leaf
    }

    /// The `cert_file`/`key_file` YAML mapping of the server files, with `extra` keys.
    pub fn yaml(&self, extra: &str) -> String {
        format!(
            "{{cert_file: {}, key_file: {}{extra}}}",
            self.path("server.pem").display(),
            self.path("server.key").display()
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client trusting `ca`, offering `alpn`, with `client` as its certificate.
fn client_config(
    ca: &CertificateDer<'static>,
    alpn: &[u8],
    client: Option<&Leaf>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

use rustls::pki_types::pem::PemObject;

/// The result of one HTTP/1 `GET path` over TLS: the server's certificate and the
/// response text, or the error.
pub async fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(CertificateDer<'static>, String), String> {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| format!("write: {e}"))?;
        let mut text = Vec::new();
        // TLS 1.3 sends the client-certificate verdict after the client's Finished: a
        // refused client learns of it on its first read.
        tls.read_to_end(&mut text)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok((cert, String::from_utf8_lossy(&text).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// The certificate `addr` serves to a client trusting `config`, polled for up to 5 s
/// (a rotated certificate is picked up within a second or two); `None` if no
/// handshake succeeded by then.
async fn first_certificate(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Option<CertificateDer<'static>> {
    for _ in 0..50 {
        if let Ok((cert, _)) = https_get(addr, config.clone(), "/").await {
            return Some(cert);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn tls_config(pki: &Pki, metrics: bool, extra: &str) -> String {
    let tls = pki.yaml(extra);
    let metrics = if metrics {
        format!("metrics:\n  tls: {tls}\n")
    } else {
        String::new()
    };
    config(&format!("tls: {tls}\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listeners_log_their_tls_state_and_serve_https() {
    let pki = Pki::new("test CA");
    pki.server();
    let d = Daemon::start(&tls_config(&pki, true, ""));
    let startup = d.startup.join("\n");
    for port in ["otlp_grpc", "otlp_http", "metrics"] {
        assert!(
            startup.contains(&format!("listener {port}="))
                && startup.contains("tls=on client_auth=none"),
            "{startup}"
        );
    }
    let client = client_config(&pki.ca_der, b"http/1.1", None);
    let (_, text) = https_get(d.metrics, client.clone(), "/healthz")
        .await
        .unwrap();
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("ok\n"),
        "{text}"
    );
    let (_, text) = https_get(d.http, client, "/v1/traces").await.unwrap();
    // A GET of an OTLP path: answered (405), over TLS.
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_exporters_over_tls_with_a_token_are_counted() {
    if !python_available() {
        return;
    }
    let pki = Pki::new("test CA");
    pki.server();
    let tokens = pki.dir.path().join("tokens");
    std::fs::write(&tokens, "exporter-token\n").unwrap();
    let auth = format!("auth: {{bearer_tokens_file: {}}}\n", tokens.display());
    let d = Daemon::start(&format!("{}{auth}", tls_config(&pki, false, "")));
    let (grpc, http) = (d.grpc.to_string(), d.http.to_string());
    let ca = pki.path("ca.pem").display().to_string();
    tokio::task::spawn_blocking(move || {
        for (protocol, endpoint, spans) in [("grpc", &grpc, "40"), ("http", &http, "30")] {
            let args = [
                "--protocol",
                protocol,
                "--endpoint",
                endpoint,
                "--spans",
                spans,
                "--logs",
                "5",
                "--ca-file",
                &ca,
            ];
            // Without the token the exporter is refused, and says so.
            let refused = python_try_send(&args);
            assert!(
                !refused.status.success(),
                "{protocol}: sent without a token"
            );
            let mut with_token = args.to_vec();
            with_token.extend(["--header", "authorization=Bearer exporter-token"]);
            python_send(&with_token);
        }
    })
    .await
    .unwrap();
    for transport in ["grpc", "http"] {
        for signal in ["traces", "logs"] {
            let refused = d
                .metric(
                    "sloxide_receiver_refused_requests_total",
                    &[
                        ("transport", transport),
                        ("signal", signal),
                        ("reason", "unauthenticated"),
                    ],
                )
                .await
                .unwrap();
            assert!(refused >= 1.0, "{transport} {signal}: {refused}");
        }
    }
    let spans = "sloxide_receiver_accepted_spans_total";
    assert_eq!(
        d.wait_metric(spans, &[("transport", "grpc")], 40.0).await,
        Some(40.0)
    );
    assert_eq!(
        d.wait_metric(spans, &[("transport", "http")], 30.0).await,
        Some(30.0)
    );
    let handshakes = "sloxide_tls_handshake_failures_total";
    assert_eq!(
        d.metric(handshakes, &[("port", "otlp_grpc")]).await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_metrics_over_https() {
    if !require(prometheus_on_path(), "prometheus") {
        return;
    }
    let pki = Pki::new("test CA");
    pki.server();
    let tokens = pki.dir.path().join("scrape-tokens");
    std::fs::write(&tokens, "scrape-token\n").unwrap();
    let scraper_token = pki.dir.path().join("scraper-token");
    std::fs::write(&scraper_token, "scrape-token\n").unwrap();
    let tls = pki.yaml("");
    let d = Daemon::start(&config(&format!(
        "metrics:\n  tls: {tls}\n  auth: {{bearer_tokens_file: {}}}\n",
        tokens.display()
    )));
    // Without the token, /metrics is refused; /healthz needs none.
    let client = client_config(&pki.ca_der, b"http/1.1", None);
    let (_, text) = https_get(d.metrics, client.clone(), "/metrics")
        .await
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    let (_, text) = https_get(d.metrics, client, "/healthz").await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let job = format!(
        "    scheme: https\n    tls_config:\n      ca_file: {}\n      server_name: localhost\n    authorization:\n      type: Bearer\n      credentials_file: {}\n",
        pki.path("ca.pem").display(),
        scraper_token.display()
    );
    let prometheus = Prometheus::start_job(&[d.metrics], None, &job).await;
    let up = prometheus
        .poll("up{job=\"sloxide\"}", Duration::from_secs(20), |r| {
            r.first()
                .is_some_and(|s| crate::prometheus::value(s) == 1.0)
        })
        .await;
    assert_eq!(
        up.first().map(crate::prometheus::value),
        Some(1.0),
        "{up:?}"
    );
    let open = prometheus
        .poll(
            "sloxide_connections_open{port=\"metrics\"}",
            Duration::from_secs(10),
            |r| !r.is_empty(),
        )
        .await;
    assert!(
        !open.is_empty(),
        "the TLS scrape carries the connection families"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let pki = Pki::new("test CA");
    pki.server();
    let client_leaf = pki.leaf(false);
    let ca = pki.path("ca.pem").display().to_string();
    let d = Daemon::start(&tls_config(&pki, false, &format!(", client_ca_file: {ca}")));
    assert!(
        d.startup.join("\n").contains("tls=on client_auth=required"),
        "{:?}",
        d.startup
    );
    let anonymous = client_config(&pki.ca_der, b"http/1.1", None);
    let refused = https_get(d.http, anonymous.clone(), "/v1/traces").await;
    assert!(refused.is_err(), "{refused:?}");
    let refused = https_get(d.grpc, anonymous, "/").await;
    assert!(refused.is_err(), "{refused:?}");
    // A certificate from another CA is refused too.
    let stranger = Pki::new("another CA").leaf(false);
    let refused = https_get(
        d.http,
        client_config(&pki.ca_der, b"http/1.1", Some(&stranger)),
        "/healthz",
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");

    let known = client_config(&pki.ca_der, b"http/1.1", Some(&client_leaf));
    let (_, text) = https_get(d.http, known, "/v1/traces").await.unwrap();
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    let failures = d
        .metric(
            "sloxide_tls_handshake_failures_total",
            &[("port", "otlp_http")],
        )
        .await
        .unwrap();
    assert!(failures >= 2.0, "{failures}");
}

/// Replaces `server.pem` and `server.key` the way a secret update does: new files,
/// renamed over the old ones.
fn replace(pki_dir: &Path, leaf: &Leaf) {
    for (name, text) in [
        ("server.pem", &leaf.cert_pem),
        ("server.key", &leaf.key_pem),
    ] {
        let tmp = pki_dir.join(format!("{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, pki_dir.join(name)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificate_files_are_used_without_a_restart() {
    let pki = Pki::new("first CA");
    let first = pki.server();
    let d = Daemon::start(&tls_config(&pki, true, ""));
    let trusts_first = client_config(&pki.ca_der, b"http/1.1", None);
    let (cert, _) = https_get(d.http, trusts_first.clone(), "/").await.unwrap();
    assert_eq!(cert, first.der);

    // A new certificate from another CA: new connections get it within a few seconds.
    let second_ca = Pki::new("second CA");
    let second = second_ca.leaf(true);
    replace(pki.dir.path(), &second);
    let trusts_second = client_config(&second_ca.ca_der, b"http/1.1", None);
    let seen = first_certificate(d.http, trusts_second.clone()).await;
    assert_eq!(
        seen.as_ref(),
        Some(&second.der),
        "the new certificate is served"
    );
    let (cert, _) = https_get(d.metrics, trusts_second.clone(), "/healthz")
        .await
        .unwrap();
    assert_eq!(cert, second.der, "on the metrics port too");
    assert!(https_get(d.http, trusts_first, "/").await.is_err());
    let reloads = "sloxide_tls_certificate_reloads_total";
    let metric = |labels: [(&'static str, &'static str); 2]| {
        let (addr, config) = (d.metrics, trusts_second.clone());
        async move {
            let (_, text) = https_get(addr, config, "/metrics").await.unwrap();
            crate::harness::sample(&text, reloads, &labels).unwrap()
        }
    };
    let applied = metric([("listeners", "otlp"), ("result", "applied")]).await;
    assert!(applied >= 1.0, "{applied}");

    // A broken file is logged and counted; the certificate in use stays. (The
    // replacement above may have been seen half done, new certificate with old key, and
    // refused once already.)
    let refused_labels = [("listeners", "otlp"), ("result", "refused")];
    let before = metric(refused_labels).await;
    std::fs::write(pki.path("server.pem"), "not a certificate\n").unwrap();
    let mut refused = before;
    for _ in 0..50 {
        refused = metric(refused_labels).await;
        if refused > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused, before + 1.0);
    let (cert, _) = https_get(d.http, trusts_second, "/").await.unwrap();
    assert_eq!(cert, second.der);
    let logged = d.logged().join("\n");
    assert!(
        logged.contains("tls.cert_file") && logged.contains("the one in use stays"),
        "{logged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handshake_holds_only_its_own_connection() {
    let pki = Pki::new("test CA");
    pki.server();
    let d = Daemon::start(&config(&format!(
        "limits: {{header_read_timeout: 1s}}\ntls: {}\n",
        pki.yaml("")
    )));
    // Connections that never start their handshake.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(d.http).await.unwrap());
    }
    let client = client_config(&pki.ca_der, b"http/1.1", None);
    let started = std::time::Instant::now();
    https_get(d.http, client, "/").await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(900));
    // They are closed by the header timeout, and counted.
    for mut s in silent {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed by the header timeout");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    let timed_out = d
        .wait_metric(
            "sloxide_connections_timed_out_total",
            &[("port", "otlp_http"), ("timeout", "header")],
            20.0,
        )
        .await;
    assert_eq!(timed_out, Some(20.0));
}

#[test]
fn check_names_the_key_and_path_of_a_missing_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sloxide.yaml");
    let missing = dir.path().join("nope.pem");
    std::fs::write(
        &path,
        format!(
            "tls:\n  cert_file: {}\n  key_file: {}\n",
            missing.display(),
            missing.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sloxide"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("tls.cert_file") && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_the_certificate_files_again_and_takes_new_paths() {
    let pki = Pki::new("first CA");
    let first = pki.server();
    let d = Daemon::start(&tls_config(&pki, false, ""));
    let (cert, _) = https_get(d.http, client_config(&pki.ca_der, b"http/1.1", None), "/")
        .await
        .unwrap();
    assert_eq!(cert, first.der);

    // A configuration naming a missing file is refused; the old certificate stays.
    let missing = pki.path("missing.pem").display().to_string();
    std::fs::write(
        d.config_path(),
        config(&format!(
            "tls: {}\n",
            pki.yaml("")
                .replace(&pki.path("server.pem").display().to_string(), &missing)
        )),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    assert_eq!(
        d.wait_metric("sloxide_config_last_reload_successful", &[], 0.0)
            .await,
        Some(0.0)
    );

    // Files elsewhere, from another CA: the reload takes them.
    let second_ca = Pki::new("second CA");
    let second = second_ca.server();
    std::fs::write(d.config_path(), tls_config(&second_ca, false, "")).unwrap();
    d.signal(libc::SIGHUP);
    let trusts_second = client_config(&second_ca.ca_der, b"http/1.1", None);
    let seen = first_certificate(d.http, trusts_second.clone()).await;
    assert_eq!(seen.as_ref(), Some(&second.der));
    assert_eq!(
        d.wait_metric("sloxide_config_last_reload_successful", &[], 1.0)
            .await,
        Some(1.0)
    );
}
