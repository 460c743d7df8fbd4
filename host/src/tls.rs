//! TLS on the main port, with certificates that are replaced without a restart.
//!
//! The certificate and key are read at start (a problem is a one-line refusal) and again when
//! either file changes (looked at every [`POLL`], read once unchanged for one more look; a
//! renewal tool or a Kubernetes secret swaps them in place) or on SIGHUP. A new pair that cannot be read, or whose key does not match the
//! certificate, is refused with a log line and a metric, and the old pair stays in use: a bad
//! renewal must not take the node off the air. Open connections keep the certificate they
//! began with; new handshakes get the new one. One crypto provider (ring), as everywhere else.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    ServerConfig,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the certificate files are looked at for a change.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// Why a certificate pair could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// The file could not be read or holds no PEM of the kind needed.
    #[error("ssl.{field}: {}: {problem}", .path.display())]
    File {
        /// `cert_path` or `key_path`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The key does not sign for the certificate.
    #[error("ssl.key_path: {}: the key does not belong to the certificate in {}", .key.display(), .cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the configuration.
    #[error("ssl: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificate in use, replaced in place on reload.
#[derive(Debug)]
pub(crate) struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times and sizes when last read.
    stamp: Mutex<Option<Stamp>>,
}

type Stamp = [(SystemTime, u64); 2];

impl Certificates {
    /// Read the pair at `cert` and `key`.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let stamp = stamp(cert, key);
        let pair = read_pair(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(pair)),
            stamp: Mutex::new(stamp),
        }))
    }

    /// Read the pair again and use it; the old one stays on error.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        *self.stamp.lock().expect("certificate lock") = stamp(&self.cert, &self.key);
        let pair = read_pair(&self.cert, &self.key)?;
        *self.current.write().expect("certificate lock") = Arc::new(pair);
        Ok(())
    }

    /// Whether either file changed since it was last read and has stayed as it is since the
    /// previous look (`seen`): a renewal that writes the certificate and the key one after the
    /// other is read once both are in place, not half-way.
    fn settled_change(&self, seen: &mut Option<Option<Stamp>>) -> bool {
        let now = stamp(&self.cert, &self.key);
        if now == *self.stamp.lock().expect("certificate lock") {
            *seen = None;
            return false;
        }
        let settled = *seen == Some(now);
        *seen = Some(now);
        settled
    }

    /// Reload on SIGHUP and when the files change, until `shutdown`; `reloaded` hears each
    /// attempt's outcome.
    pub(crate) async fn watch(
        self: Arc<Self>,
        shutdown: CancellationToken,
        reloaded: impl Fn(&Result<(), TlsError>),
    ) {
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut poll = tokio::time::interval(POLL);
        let mut seen = None;
        loop {
            let asked = tokio::select! {
                () = shutdown.cancelled() => return,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
                _ = poll.tick() => false,
            };
            if asked || self.settled_change(&mut seen) {
                reloaded(&self.reload());
            }
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}

fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    let one = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    Some([one(cert)?, one(key)?])
}

fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let file_error = |field, path: &Path, problem: String| TlsError::File {
        field,
        path: path.to_path_buf(),
        problem,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error("cert_path", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error("cert_path", cert, "no PEM certificate in it".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error("key_path", key, e.to_string()))?;
    let signing = ring::default_provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| file_error("key_path", key, e.to_string()))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match()
        .map_err(|_| TlsError::Mismatch { cert: cert.to_path_buf(), key: key.to_path_buf() })?;
    Ok(pair)
}

/// A TLS acceptor serving whatever `certificates` holds at each handshake (HTTP/1.1 only).
pub(crate) fn acceptor(certificates: Arc<Certificates>) -> Result<TlsAcceptor, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
