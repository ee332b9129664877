//! The one place that builds rustls configs. One crypto provider (ring), passed explicitly to every
//! config, so a second provider in the graph can never make a server panic at start.
//!
//! Both sides check the peer's **role and name**, not only "signed by our CA": the agent accepts
//! only the controller's certificate; the controller accepts, at an agent's address, only that
//! agent's certificate (its name travels as the TLS server name `<name>.agent.slipway`).

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::config::TlsPaths;
use crate::pki::{Identity, cert_info};
use crate::{Error, Result};

/// The crypto provider every config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Install ring as the process default (idempotent). Configs here do not need it, but any
/// library that asks for the default then gets the same provider.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// PEM material for one peer: the CA to trust, its own certificate chain and key.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TlsMaterial {
    pub fn load(paths: &TlsPaths) -> Result<Self> {
        let read = |p: &Path, what: &'static str| std::fs::read_to_string(p).map_err(|e| Error::io(what, p, e));
        Ok(TlsMaterial {
            ca_pem: read(&paths.ca, "cannot read CA certificate")?,
            cert_pem: read(&paths.cert, "cannot read certificate")?,
            key_pem: read(&paths.key, "cannot read private key")?,
        })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>> {
        roots_of(&self.ca_pem).map(Arc::new)
    }

    fn chain(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(format!("certificate PEM: {e}")))?;
        if chain.is_empty() {
            return Err(Error::Tls("the certificate file holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| Error::Tls(format!("private key PEM: {e}")))?;
        Ok((chain, key))
    }
}

fn has_identity(der: &CertificateDer<'_>, expected: &Identity) -> std::result::Result<(), rustls::Error> {
    let info = cert_info(der).map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if info.identities.iter().any(|id| id == expected) {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
    }
}

/// When the certificate at an agent's address is another agent's, say whose: the address or the
/// bundle installed there is wrong, and the operator needs to know which.
fn explain_wrong_agent(e: rustls::Error, der: &CertificateDer<'_>, expected: Option<&Identity>) -> rustls::Error {
    let wrong_name = matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. }
                | CertificateError::ApplicationVerificationFailure
        )
    );
    let (Some(Identity::Agent(want)), true) = (expected, wrong_name) else { return e };
    let presented: Vec<String> = cert_info(der)
        .map(|info| {
            info.identities
                .iter()
                .map(|id| match id {
                    Identity::Agent(name) => format!("agent '{name}'"),
                    Identity::Controller => "the controller".to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    if presented.is_empty() {
        return e;
    }
    let msg = format!(
        "the certificate there is {}'s, not agent '{want}''s: that address runs another agent, or the bundle \
         installed there is another agent's; fix the address (`slipctl agent rm {want}` and add it again with the \
         right --addr) or install {want}'s bundle on that host",
        presented.join(" and ")
    );
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(std::io::Error::other(msg)))))
}

/// The handshake-signature checks of a verifier that wraps another (`self.inner`): only the
/// certificate checks differ between Slipway's verifiers.
macro_rules! signatures_by_inner {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// Server side (agent): chain to our CA, client-auth EKU, and the controller's identity.
#[derive(Debug)]
struct ExpectClient {
    inner: Arc<dyn ClientCertVerifier>,
    expected: Identity,
}

impl ClientCertVerifier for ExpectClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        has_identity(end_entity, &self.expected)?;
        Ok(verified)
    }

    signatures_by_inner!();
}

/// Client side (controller): chain to our CA, server-auth EKU, the DNS name dialled, and the
/// agent identity that DNS name stands for.
#[derive(Debug)]
struct ExpectAgent {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ExpectAgent {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let expected = match server_name {
            ServerName::DnsName(dns) => Identity::from_dns_name(dns.as_ref()),
            _ => None,
        };
        let checked = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .and_then(|verified| match &expected {
                Some(id @ Identity::Agent(_)) => has_identity(end_entity, id).map(|()| verified),
                _ => Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)),
            });
        checked.map_err(|e| explain_wrong_agent(e, end_entity, expected.as_ref()))
    }

    signatures_by_inner!();
}

/// The agent's server config: requires a client certificate that is the controller's.
pub fn agent_server_config(material: &TlsMaterial) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(material.roots()?, provider.clone())
        .build()
        .map_err(|e| Error::Tls(format!("client verifier: {e}")))?;
    let verifier = Arc::new(ExpectClient { inner, expected: Identity::Controller });
    let (chain, key) = material.chain()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(format!("agent certificate or key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The controller's client config: presents the controller certificate; accepts an agent only
/// when its certificate names the agent dialled (see [`agent_server_name`]).
pub fn controller_client_config(material: &TlsMaterial) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(material.roots()?, provider.clone())
        .build()
        .map_err(|e| Error::Tls(format!("server verifier: {e}")))?;
    let (chain, key) = material.chain()?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectAgent { inner }))
        .with_client_auth_cert(chain, key)
        .map_err(|e| Error::Tls(format!("controller certificate or key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS server name to dial agent `name` with.
pub fn agent_server_name(name: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(Identity::Agent(name.to_owned()).dns_name())
        .map_err(|e| Error::Tls(format!("agent name '{name}' is not usable as a TLS name: {e}")))
}

/// The server's HTTPS config (`slipctl serve --tls-cert F --tls-key F`): an ordinary web
/// server certificate, no client certificate, HTTP/1.1.
pub fn https_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let read = |p: &Path, what: &'static str| std::fs::read_to_string(p).map_err(|e| Error::io(what, p, e));
    let material = TlsMaterial {
        ca_pem: String::new(),
        cert_pem: read(cert, "cannot read --tls-cert")?,
        key_pem: read(key, "cannot read --tls-key")?,
    };
    let (chain, key) = material.chain()?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(format!("--tls-cert/--tls-key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CA certificates of a PEM text (at least one).
fn roots_of(ca_pem: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| Error::Tls(format!("CA PEM: {e}")))?;
        roots.add(cert).map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls("the CA file holds no certificate".into()));
    }
    Ok(roots)
}

/// A client config for HTTPS to the server (a remote `slipctl --server https://…`): trusts
/// the CA certificates in `ca_pem`.
pub fn https_client_config(ca_pem: &str) -> Result<Arc<ClientConfig>> {
    https_client_trusting(roots_of(ca_pem)?)
}

/// A client config for HTTPS to public services (chat robots, webhooks): the Mozilla roots
/// shipped with `webpki-roots`, so no system store is needed.
pub fn https_public_client_config() -> Result<Arc<ClientConfig>> {
    https_client_trusting(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() })
}

fn https_client_trusting(roots: RootCertStore) -> Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client side (an agent's renewal, or `slipd join` once pinned): chain to the CAs trusted,
/// server-auth EKU, and the controller's identity (`controller.slipway`).
#[derive(Debug)]
struct ExpectController {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ExpectController {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        has_identity(end_entity, &Identity::Controller)?;
        Ok(verified)
    }

    signatures_by_inner!();
}

/// `slipd join`'s view of the controller before it trusts anything: the chain the server
/// presents must hold the CA certificate whose SHA-256 is `pin`, and the server's certificate
/// must chain to it and be the controller's. Checked in the handshake, so a server that fails
/// it never sees a byte of the request (the token).
#[derive(Debug)]
struct PinnedController {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedController {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates.iter().find(|c| crate::pki::pin_of(c) == self.pin).ok_or_else(|| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
                std::io::Error::other(format!(
                    "the server's certificate chain holds no CA with SHA-256 {}: this is not the controller the \
                     join command was made for, or --ca-sha256 was mistyped; nothing was sent",
                    self.pin
                )),
            ))))
        })?;
        let mut roots = RootCertStore::empty();
        roots.add(pinned.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("pinned verifier: {e}")))?;
        ExpectController { inner }.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS server name the controller's join endpoint is dialled with, whatever its URL's host.
pub fn controller_server_name() -> ServerName<'static> {
    ServerName::try_from(Identity::Controller.dns_name()).expect("a valid DNS name")
}

/// `slipd join`'s client config: trusts only a chain holding the CA pinned by `pin`
/// (hex SHA-256 of its DER); no client certificate.
pub fn join_client_config(pin: &str) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let verifier = PinnedController { pin: pin.to_ascii_lowercase(), provider: provider.clone() };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An agent's client config for renewing: presents its certificate, trusts the controller
/// only (its CA bundle, its identity).
pub fn renew_client_config(material: &TlsMaterial) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(material.roots()?, provider.clone())
        .build()
        .map_err(|e| Error::Tls(format!("server verifier: {e}")))?;
    let (chain, key) = material.chain()?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectController { inner }))
        .with_client_auth_cert(chain, key)
        .map_err(|e| Error::Tls(format!("agent certificate or key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The controller's join endpoint: presents `cert_pem` (the controller as a server) followed
/// by the CA bundle (so a joining agent finds the CA it pinned), and takes an agent's
/// certificate when one is offered (renewal) but does not require it (a join).
pub fn join_server_config(ca_bundle_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let material = TlsMaterial {
        ca_pem: ca_bundle_pem.to_owned(),
        cert_pem: format!("{cert_pem}{ca_bundle_pem}"),
        key_pem: key_pem.to_owned(),
    };
    let verifier = WebPkiClientVerifier::builder_with_provider(material.roots()?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Tls(format!("client verifier: {e}")))?;
    let (chain, key) = material.chain()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(format!("join endpoint certificate or key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
