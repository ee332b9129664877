//! The controller's CA and the certificates it issues. Every certificate carries its role and
//! name as a SPIFFE-style SAN URI (`spiffe://slipway/controller`, `spiffe://slipway/agent/<name>`)
//! and its extended key usage (controller: client only; agent: server only).

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use x509_parser::extensions::GeneralName;

use crate::names::validate_agent_name;
use crate::{Error, Result};

const URI_PREFIX: &str = "spiffe://slipway/";
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
const LEAF_VALIDITY: Duration = Duration::from_secs(3 * 365 * 86_400);
/// An agent that joined gets a certificate this long by default (`slipctl serve
/// --agent-cert-days`): short enough that a stolen key is soon worthless and that renewal is
/// exercised every week, long enough that a controller down over a long weekend cuts no host
/// off — an agent renews at 70–90 % of it, so it has at least 1 day of slack at 10 days.
pub const AGENT_CERT_LIFETIME: Duration = Duration::from_secs(10 * 86_400);

/// Who a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Controller,
    Agent(String),
}

impl Identity {
    pub fn uri(&self) -> String {
        match self {
            Identity::Controller => format!("{URI_PREFIX}controller"),
            Identity::Agent(name) => format!("{URI_PREFIX}agent/{name}"),
        }
    }

    pub fn from_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        if rest == "controller" {
            return Some(Identity::Controller);
        }
        let name = rest.strip_prefix("agent/")?;
        validate_agent_name(name).ok()?;
        Some(Identity::Agent(name.to_owned()))
    }

    /// The DNS name in the certificate and the TLS server name the controller dials.
    pub fn dns_name(&self) -> String {
        match self {
            Identity::Controller => "controller.slipway".to_owned(),
            Identity::Agent(name) => format!("{name}.agent.slipway"),
        }
    }

    pub fn from_dns_name(dns: &str) -> Option<Identity> {
        if dns == "controller.slipway" {
            return Some(Identity::Controller);
        }
        let name = dns.strip_suffix(".agent.slipway")?;
        validate_agent_name(name).ok()?;
        Some(Identity::Agent(name.to_owned()))
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Controller => f.write_str("controller"),
            Identity::Agent(n) => write!(f, "agent '{n}'"),
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The controller's certificate authority.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn pki_err(what: &str) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::Pki(format!("{what}: {e}"))
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = crate::time::unix_now().max(0) as u64;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(now.saturating_sub(3600));
    params.not_after = epoch + Duration::from_secs(now) + lifetime;
}

impl Ca {
    pub fn generate() -> Result<(Ca, String)> {
        let key = KeyPair::generate().map_err(pki_err("generate CA key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err("CA parameters"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Slipway CA");
        dn.push(DnType::OrganizationName, "Slipway");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(pki_err("self-sign CA"))?;
        let key_pem = key.serialize_pem();
        let cert_pem = cert.pem();
        Ok((Ca { cert_pem, issuer: Issuer::new(params, key) }, key_pem))
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem).map_err(pki_err("read CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(pki_err("read CA certificate"))?;
        Ok(Ca { cert_pem: cert_pem.to_owned(), issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issue a leaf certificate for `identity`, with a fresh key.
    pub fn issue(&self, identity: &Identity) -> Result<IssuedCert> {
        let key = KeyPair::generate().map_err(pki_err("generate key"))?;
        let cert_pem = self.sign(identity, &key, LEAF_VALIDITY, Usage::Own)?;
        Ok(IssuedCert { cert_pem, key_pem: key.serialize_pem() })
    }

    /// A certificate for agent `name` for the key of a certificate request made on its host,
    /// valid `lifetime`. Only the request's key is used: its names, SANs and extensions are
    /// not read, so the name, role and SANs are the controller's alone.
    pub fn issue_for_request(&self, name: &str, csr_pem: &str, lifetime: Duration) -> Result<String> {
        validate_agent_name(name)?;
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            Error::Pki(format!("the certificate request does not parse or its signature is wrong: {e}"))
        })?;
        self.sign(&Identity::Agent(name.to_owned()), &csr.public_key, lifetime, Usage::Both)
    }

    /// The certificate the controller's join endpoint presents: the controller's identity as a
    /// server, valid `lifetime`, with a fresh key.
    pub fn issue_join_server(&self, lifetime: Duration) -> Result<IssuedCert> {
        let key = KeyPair::generate().map_err(pki_err("generate key"))?;
        let cert_pem = self.sign(&Identity::Controller, &key, lifetime, Usage::Server)?;
        Ok(IssuedCert { cert_pem, key_pem: key.serialize_pem() })
    }

    fn sign(
        &self,
        identity: &Identity,
        key: &impl rcgen::PublicKeyData,
        lifetime: Duration,
        usage: Usage,
    ) -> Result<String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err("parameters"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.dns_name());
        dn.push(DnType::OrganizationName, "Slipway");
        params.distinguished_name = dn;
        let uri = identity.uri().try_into().map_err(pki_err("SAN URI"))?;
        let dns = identity.dns_name().try_into().map_err(pki_err("SAN DNS name"))?;
        params.subject_alt_names = vec![SanType::URI(uri), SanType::DnsName(dns)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let (server, client) = (ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth);
        params.extended_key_usages = match (usage, identity) {
            (Usage::Own, Identity::Controller) => vec![client],
            (Usage::Own, Identity::Agent(_)) => vec![server],
            (Usage::Server, _) => vec![server],
            // An agent that joined also renews over its certificate, as a client.
            (Usage::Both, _) => vec![server, client],
        };
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, lifetime);
        let cert = params.signed_by(key, &self.issuer).map_err(pki_err("sign certificate"))?;
        Ok(cert.pem())
    }
}

/// What a certificate is for, beyond its role's own use.
#[derive(Clone, Copy)]
enum Usage {
    /// The role's own: the controller a client, an agent a server.
    Own,
    Server,
    Both,
}

/// A certificate request for `name`, made on the agent's host with its key (`key_pem`, or a
/// new one; the key never leaves the host): (request PEM, key PEM).
pub fn request_for(name: &str, key_pem: Option<&str>) -> Result<(String, String)> {
    let key = match key_pem {
        Some(pem) => KeyPair::from_pem(pem).map_err(pki_err("read the agent's key"))?,
        None => KeyPair::generate().map_err(pki_err("generate key"))?,
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err("parameters"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, Identity::Agent(name.to_owned()).dns_name());
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(pki_err("certificate request"))?;
    Ok((csr.pem().map_err(pki_err("certificate request PEM"))?, key.serialize_pem()))
}

/// The pin of a certificate: the SHA-256 of its DER, in hex (`--ca-sha256`).
pub fn pin_of(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

/// Every certificate of a PEM bundle, as DER.
pub fn certs_der(pem: &str) -> Result<Vec<Vec<u8>>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()).map_err(|e| Error::Pki(format!("PEM: {e}"))))
        .collect()
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub identities: Vec<Identity>,
    /// Unix seconds.
    pub not_after: i64,
}

/// Read identities and expiry from a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| Error::Pki(format!("parse: {e}")))?;
    let mut identities = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(id) = Identity::from_uri(uri)
            {
                identities.push(id);
            }
        }
    }
    Ok(CertInfo { identities, not_after: cert.validity().not_after.timestamp() })
}

/// Whether `cert` names `ca` as its issuer: the issuer is the CA's subject and the authority key
/// id is the CA's key id (a consistency check of a home, not a signature check).
pub fn issued_by(cert: &[u8], ca: &[u8]) -> Result<bool> {
    let parse =
        |der| x509_parser::parse_x509_certificate(der).map(|(_, c)| c).map_err(|e| Error::Pki(format!("parse: {e}")));
    let (cert, ca) = (parse(cert)?, parse(ca)?);
    let ski = ca.extensions().iter().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
        _ => None,
    });
    let aki = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
            a.key_identifier.as_ref().map(|k| k.0.to_vec())
        }
        _ => None,
    });
    Ok(cert.issuer() == ca.subject() && (ski.is_none() || aki.is_none() || ski == aki))
}

/// The first certificate of a PEM bundle, as DER.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| Error::Pki("no certificate in PEM".into()))?
        .map(|c| c.to_vec())
        .map_err(|e| Error::Pki(format!("PEM: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certs_carry_role_and_name() {
        let (ca, ca_key) = Ca::generate().unwrap();
        let ca = Ca::from_pem(ca.cert_pem(), &ca_key).unwrap();
        let agent = ca.issue(&Identity::Agent("web-1".into())).unwrap();
        let info = cert_info(&first_cert_der(&agent.cert_pem).unwrap()).unwrap();
        assert_eq!(info.identities, vec![Identity::Agent("web-1".into())]);
        let days = (info.not_after - crate::time::unix_now()) / 86_400;
        assert!((1000..1100).contains(&days), "{days}");
        let ctl = ca.issue(&Identity::Controller).unwrap();
        let info = cert_info(&first_cert_der(&ctl.cert_pem).unwrap()).unwrap();
        assert_eq!(info.identities, vec![Identity::Controller]);
    }

    #[test]
    fn identity_round_trips() {
        for id in [Identity::Controller, Identity::Agent("web-1.prod".into())] {
            assert_eq!(Identity::from_uri(&id.uri()), Some(id.clone()));
            assert_eq!(Identity::from_dns_name(&id.dns_name()), Some(id));
        }
        assert_eq!(Identity::from_uri("spiffe://slipway/agent/../x"), None);
        assert_eq!(Identity::from_uri("spiffe://other/controller"), None);
    }
}
