//! The one place that builds rustls configurations.
//!
//! Server side: TLS 1.3 only (TLS 1.2 and below fail the handshake), ALPN
//! `h2` then `http/1.1`. Upstream side: TLS 1.3 only, verified against the
//! route's `upstream_ca`. The crypto provider is aws-lc-rs, passed explicitly
//! so that nothing depends on a process-wide default.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};

use crate::config::TlsFiles;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol ids the TCP listener offers, in preference order.
pub const ALPN_TCP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no usable PEM object of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What was expected.
        what: String,
    },
    /// rustls refused the material.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs aws-lc-rs as the process default provider (for libraries that ask for it).
pub fn install_default_provider() {
    // Err means one was installed already, which is fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Loads a PEM certificate chain (leaf first).
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            what: format!("invalid PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            what: "expected at least one PEM \"CERTIFICATE\" block".into(),
        });
    }
    Ok(certs)
}

/// Loads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        what: format!("expected a PEM private key: {e}"),
    })
}

/// Loads CA certificates into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_chain(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Loads a certificate chain and key and checks that they belong together.
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_chain(cert)?;
    let key = load_key(key)?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider())?))
}

/// A single-certificate server config: TLS 1.3 only, ALPN h2 and http/1.1
/// (the demo backends use it; the proxy uses [`CertResolver`]).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let store = CertStore {
        default: certified_key(cert, key)?,
        by_host: HashMap::new(),
    };
    server_config_with(Arc::new(CertResolver::new(store)), ALPN_TCP)
}

/// A server config that takes its certificates from `resolver`: TLS 1.3 only, no 0-RTT.
pub fn server_config_with(
    resolver: Arc<CertResolver>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // 0-RTT stays off: replayable requests are never accepted early.
    cfg.max_early_data_size = 0;
    Ok(Arc::new(cfg))
}

/// The certificates being served: a default, and one per SNI host.
#[derive(Debug)]
pub struct CertStore {
    default: Arc<CertifiedKey>,
    by_host: HashMap<String, Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads every certificate of `[tls]`; any failure refuses the whole set.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let default = certified_key(&files.cert, &files.key)?;
        let mut by_host = HashMap::new();
        for sni in &files.sni {
            let ck = certified_key(&sni.cert, &sni.key)?;
            for h in &sni.hosts {
                by_host.insert(h.clone(), ck.clone());
            }
        }
        Ok(Self { default, by_host })
    }

    /// The leaf certificates' files, to watch for changes.
    pub fn files(files: &TlsFiles) -> Vec<std::path::PathBuf> {
        let mut v = vec![files.cert.clone(), files.key.clone()];
        for s in &files.sni {
            v.push(s.cert.clone());
            v.push(s.key.clone());
        }
        v
    }
}

/// Picks the certificate by SNI from a store that can be swapped while serving:
/// a reload affects new handshakes only; connections in flight keep theirs.
#[derive(Debug)]
pub struct CertResolver {
    store: ArcSwap<CertStore>,
}

impl CertResolver {
    /// Serves `store`.
    pub fn new(store: CertStore) -> Self {
        Self {
            store: ArcSwap::from_pointee(store),
        }
    }

    /// Swaps in a new set of certificates.
    pub fn replace(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let store = self.store.load();
        if !store.by_host.is_empty()
            && let Some(name) = hello.server_name()
        {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(ck) = store.by_host.get(&name) {
                return Some(ck.clone());
            }
        }
        Some(store.default.clone())
    }
}

/// A client config for upstreams: TLS 1.3 only, verified against `roots`.
pub fn upstream_client_config(roots: RootCertStore) -> Result<ClientConfig, TlsError> {
    // ALPN is left to the HTTP connector, which sets what it will speak.
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
