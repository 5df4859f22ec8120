//! TLS for the queue server and its clients, from PEM files.
//!
//! Everything is read and checked when a command starts, so a missing file,
//! a file without a certificate or key, or a key that does not match its
//! certificate is a usage error naming the file (exit 2), not a handshake
//! that fails later. rustls does the rest, through tonic's own TLS support:
//! a server certificate and key, optionally a client CA (mutual TLS: a
//! client without a certificate signed by it is refused in the handshake);
//! a client trusts the CA given with `--ca`, or the system's roots, and may
//! present a certificate of its own.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::error::{Error, Result};

/// A certificate chain and its key, read and checked.
#[derive(Clone)]
struct KeyPair {
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::usage(format!("{flag} {}: {e}", path.display())))
}

/// The certificates in a PEM file; at least one.
fn certificates(flag: &str, path: &Path) -> Result<Vec<u8>> {
    let pem = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::usage(format!("{flag} {}: not a PEM file: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::usage(format!(
            "{flag} {}: no certificate in it (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(pem)
}

fn key_pair(cert_flag: &str, cert: &Path, key_flag: &str, key: &Path) -> Result<KeyPair> {
    let cert_pem = certificates(cert_flag, cert)?;
    let key_pem = read(key_flag, key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        Error::usage(format!(
            "{key_flag} {}: no private key in it ({e})",
            key.display()
        ))
    })?;
    // The key must belong to the first certificate, or every handshake fails.
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .expect("checked above");
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| Error::usage(format!("{key_flag} {}: {e}", key.display())))?;
    rustls::sign::CertifiedKey::new(chain, signing)
        .keys_match()
        .map_err(|e| {
            Error::usage(format!(
                "{key_flag} {}: does not match the certificate in {} ({e})",
                key.display(),
                cert.display()
            ))
        })?;
    Ok(KeyPair {
        cert: cert_pem,
        key: key_pem,
    })
}

/// What `nova serve` needs for TLS: its certificate and key, and the CA its
/// clients' certificates must be signed by when mutual TLS is asked for.
#[derive(Clone)]
pub struct ServerTls {
    pair: KeyPair,
    client_ca: Option<Vec<u8>>,
}

impl ServerTls {
    /// From `--tls-cert`, `--tls-key` and `--tls-client-ca`; `None` without a certificate.
    pub fn load(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<ServerTls>> {
        let (cert, key) = match (cert, key, client_ca) {
            (None, None, None) => return Ok(None),
            (Some(cert), Some(key), _) => (cert, key),
            (None, _, _) => {
                return Err(Error::usage(
                    "--tls-cert FILE is needed with --tls-key or --tls-client-ca",
                ));
            }
            (Some(_), None, _) => return Err(Error::usage("--tls-cert needs --tls-key FILE")),
        };
        Ok(Some(ServerTls {
            pair: key_pair("--tls-cert", cert, "--tls-key", key)?,
            client_ca: client_ca
                .map(|p| certificates("--tls-client-ca", p))
                .transpose()?,
        }))
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.client_ca.is_some()
    }

    /// The same settings for a listener served with rustls directly (the
    /// dashboard's HTTP/1.1).
    pub fn rustls_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>> {
        use std::sync::Arc;
        let failed = |e: &dyn std::fmt::Display| Error::Failed(format!("TLS settings: {e}"));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| failed(&e))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    roots
                        .add(cert.map_err(|e| failed(&e))?)
                        .map_err(|e| failed(&e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| failed(&e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = CertificateDer::pem_slice_iter(&self.pair.cert)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| failed(&e))?;
        let key = PrivateKeyDer::from_pem_slice(&self.pair.key).map_err(|e| failed(&e))?;
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| failed(&e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    pub fn config(&self) -> ServerTlsConfig {
        let mut config =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.pair.cert, &self.pair.key));
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        config
    }
}

/// What a client of `nova serve` needs for an `https://` URL: the CA to
/// trust (the system's roots without one) and its own certificate for
/// mutual TLS.
#[derive(Clone, Default)]
pub struct ClientTls {
    ca: Option<Vec<u8>>,
    pair: Option<KeyPair>,
}

impl std::fmt::Debug for ClientTls {
    /// Whether each part is set; never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca.is_some())
            .field("client_cert", &self.pair.is_some())
            .finish()
    }
}

impl ClientTls {
    /// From `--ca`, `--client-cert` and `--client-key`.
    pub fn load(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<ClientTls> {
        let pair = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(key_pair("--client-cert", cert, "--client-key", key)?),
            (Some(_), None) => return Err(Error::usage("--client-cert needs --client-key FILE")),
            (None, Some(_)) => return Err(Error::usage("--client-key needs --client-cert FILE")),
        };
        Ok(ClientTls {
            ca: ca.map(|p| certificates("--ca", p)).transpose()?,
            pair,
        })
    }

    /// Whether the client presents a certificate of its own.
    pub fn has_identity(&self) -> bool {
        self.pair.is_some()
    }

    /// Whether any TLS option was given (they mean nothing for `http://`).
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.pair.is_some()
    }

    /// The client's TLS settings for a server named `host`.
    pub fn config(&self, host: &str) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().domain_name(host);
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        if let Some(pair) = &self.pair {
            config = config.identity(Identity::from_pem(&pair.cert, &pair.key));
        }
        config
    }
}
