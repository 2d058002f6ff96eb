//! TLS with rustls on ring: the server configuration built from PEM files, and the
//! [`Certificates`] of a group of listeners, re-read without a restart when the files
//! change (checked every [`CHECK_EVERY`]) or the configuration is reloaded. A bad new
//! file is logged and counted, and the certificate in use stays.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::sync::watch;

use super::metrics::{ConnectionMetrics, TlsListeners};
use super::stopped;
use crate::config::{Tls, TlsVersion};

/// How often the certificate files are read to notice a change.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The ALPN protocols offered, in order of preference (gRPC clients such as Python's
/// grpcio insist on `h2`).
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// One of the files of a [`Tls`] setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// `cert_file`.
    Cert = 0,
    /// `key_file`.
    Key = 1,
    /// `client_ca_file`.
    ClientCa = 2,
}

impl TlsFile {
    /// The configuration key, below `tls` or `metrics.tls`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cert => "cert_file",
            Self::Key => "key_file",
            Self::ClientCa => "client_ca_file",
        }
    }
}

/// Why a TLS setting cannot be used: which file, and what is wrong with it.
#[derive(Debug)]
pub struct TlsError {
    /// The file at fault.
    pub file: TlsFile,
    /// Its path.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for TlsError {}

/// The bytes of the files of one setting, as read (or the read error's text), to
/// notice a change.
type Contents = [Result<Vec<u8>, String>; 3];

fn read_all(tls: &Tls) -> Contents {
    let read = |path: Option<&Path>| match path {
        Some(path) => std::fs::read(path).map_err(|e| e.to_string()),
        None => Ok(Vec::new()),
    };
    [
        read(Some(&tls.cert_file)),
        read(Some(&tls.key_file)),
        read(tls.client_ca_file.as_deref()),
    ]
}

/// Reads the files of `tls` and builds the server configuration from them.
pub fn load(tls: &Tls) -> Result<Arc<ServerConfig>, TlsError> {
    build(tls, &read_all(tls))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server configuration of `tls` from the files' `contents`.
fn build(tls: &Tls, contents: &Contents) -> Result<Arc<ServerConfig>, TlsError> {
    let fail = |file: TlsFile, message: String| {
        let path = match file {
            TlsFile::Cert => tls.cert_file.clone(),
            TlsFile::Key => tls.key_file.clone(),
            TlsFile::ClientCa => tls.client_ca_file.clone().unwrap_or_default(),
        };
        TlsError {
            file,
            path,
            message,
        }
    };
    let bytes = |file: TlsFile| -> Result<&[u8], TlsError> {
        contents[file as usize]
            .as_deref()
            .map_err(|e| fail(file, format!("cannot read the file: {e}")))
    };
    let certs = |file: TlsFile| -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(bytes(file)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(file, format!("not a PEM certificate file: {e}")))?;
        if certs.is_empty() {
            return Err(fail(
                file,
                "holds no PEM CERTIFICATE block; give a PEM certificate file".to_owned(),
            ));
        }
        Ok(certs)
    };
    let chain = certs(TlsFile::Cert)?;
    let key = PrivateKeyDer::from_pem_slice(bytes(TlsFile::Key)?).map_err(|e| {
        fail(
            TlsFile::Key,
            format!("holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let provider = provider();
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| fail(TlsFile::Cert, e.to_string()))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(_) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in certs(TlsFile::ClientCa)? {
                roots.add(ca).map_err(|e| {
                    fail(
                        TlsFile::ClientCa,
                        format!("holds a CA certificate that cannot be used: {e}"),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| fail(TlsFile::ClientCa, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        fail(
            TlsFile::Key,
            format!(
                "does not go with cert_file {}: {e}",
                tls.cert_file.display()
            ),
        )
    })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The certificates of one group of listeners, as in use now.
#[derive(Debug)]
pub struct Certificates {
    listeners: TlsListeners,
    /// The setting, and the file contents last seen (applied or refused).
    settings: Mutex<(Tls, Contents)>,
    current: RwLock<Arc<ServerConfig>>,
    metrics: Arc<crate::telemetry::Telemetry>,
}

impl Certificates {
    /// Loads `tls` for `listeners`; counts reloads in `telemetry`.
    pub fn new(
        listeners: TlsListeners,
        tls: &Tls,
        telemetry: Arc<crate::telemetry::Telemetry>,
    ) -> Result<Arc<Self>, TlsError> {
        let contents = read_all(tls);
        let config = build(tls, &contents)?;
        Ok(Arc::new(Self {
            listeners,
            settings: Mutex::new((tls.clone(), contents)),
            current: RwLock::new(config),
            metrics: telemetry,
        }))
    }

    fn counters(&self) -> &ConnectionMetrics {
        &self.metrics.connections
    }

    /// The acceptor for a new connection, with the certificate in use now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// `required` when clients must present a certificate, else `none`.
    pub fn client_auth(&self) -> &'static str {
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if settings.0.client_ca_file.is_some() {
            "required"
        } else {
            "none"
        }
    }

    /// Reads the files again and, when they changed since last seen (or `force`),
    /// builds and swaps in the new configuration; a file that does not do is logged
    /// and counted, and the configuration in use stays. Blocking file I/O.
    pub fn refresh(&self, force: bool) {
        let mut settings = self
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let contents = read_all(&settings.0);
        if !force && contents == settings.1 {
            return;
        }
        let built = build(&settings.0, &contents);
        settings.1 = contents;
        let key = self.listeners.key();
        match built {
            Ok(config) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
                self.counters().certificate_reloaded(self.listeners, true);
                tracing::info!("{key}: certificate files read again; new connections use them");
            }
            Err(e) => {
                self.counters().certificate_reloaded(self.listeners, false);
                tracing::error!(
                    "{key}.{}: certificate not reloaded, the one in use stays: {e}",
                    e.file.name()
                );
            }
        }
    }

    /// Takes the setting of a reloaded configuration, and reads its files now.
    pub fn set(&self, tls: &Tls) {
        {
            let mut settings = self
                .settings
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            settings.0 = tls.clone();
        }
        self.refresh(true);
    }

    /// Checks the files every [`CHECK_EVERY`] until `stop` turns true.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    let this = self.clone();
                    let _ = tokio::task::spawn_blocking(move || this.refresh(false)).await;
                }
                () = stopped(&mut stop) => break,
            }
        }
    }
}
