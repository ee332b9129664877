//! mTLS refusals: each side checks the peer's role and name, not only the CA.

use std::sync::Arc;

use slipway_common::pki::{Ca, Identity};
use slipway_common::tls::{TlsMaterial, controller_client_config};
use slipway_controller::client::{self, Timeouts};
use slipway_controller::store::AgentRecord;
use slipway_proto::pb;
use slipway_tests::Fleet;

fn record(name: &str, addr: &str) -> AgentRecord {
    AgentRecord {
        name: name.into(),
        addr: addr.into(),
        labels: Default::default(),
        added_at: 0,
        trust: Default::default(),
    }
}

/// Dial `addr` expecting agent `name`, with `tls`, and call Info.
fn info(tls: Arc<rustls::ClientConfig>, name: &str, addr: &str) -> Result<pb::InfoReply, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let timeouts = Timeouts { connect: std::time::Duration::from_secs(5), call: std::time::Duration::from_secs(5) };
        let mut c = client::connect(tls, &record(name, addr), timeouts).await.map_err(|e| e.to_string())?;
        c.info(pb::InfoRequest {}).await.map(|r| r.into_inner()).map_err(|s| s.to_string())
    })
}

fn material(fleet: &Fleet, cert: &str, key: &str) -> TlsMaterial {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    TlsMaterial { ca_pem: read(fleet.home.join("pki/ca.pem")), cert_pem: cert.into(), key_pem: key.into() }
}

#[test]
fn each_side_checks_role_and_name() {
    let fleet = Fleet::new(2);
    let pki = fleet.home.join("pki");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    let controller = material(&fleet, &read(pki.join("controller.pem")), &read(pki.join("controller.key")));
    let (web1, web2) = (fleet.agents[0].addr(), fleet.agents[1].addr());

    // Positive control: the controller's identity, the right agent at its address.
    let good = controller_client_config(&controller).unwrap();
    let reply = info(good.clone(), "web-1", &web1).expect("controller reaches web-1");
    assert_eq!(reply.name, "web-1");

    // 1. No client certificate.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(controller.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let anonymous = rustls::ClientConfig::builder_with_provider(slipway_common::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut anonymous = anonymous;
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    assert!(info(Arc::new(anonymous), "web-1", &web1).is_err(), "a client without a certificate is refused");

    // 2. A controller certificate from another CA.
    let (other_ca, _) = Ca::generate().unwrap();
    let foreign = other_ca.issue(&Identity::Controller).unwrap();
    let foreign = controller_client_config(&material(&fleet, &foreign.cert_pem, &foreign.key_pem)).unwrap();
    assert!(info(foreign, "web-1", &web1).is_err(), "a certificate from another CA is refused");

    // 3. An agent's certificate used as a client.
    let bundle = &fleet.agents[1].bundle;
    let as_client = material(&fleet, &read(bundle.join("agent.pem")), &read(bundle.join("agent.key")));
    let as_client = controller_client_config(&as_client).unwrap();
    assert!(info(as_client, "web-1", &web1).is_err(), "an agent certificate cannot act as the controller");

    // 4. The wrong agent's certificate at an address: web-2 answers where web-1 is expected.
    assert!(info(good.clone(), "web-1", &web2).is_err(), "web-2's certificate is not web-1's");
    // ...and through slipctl: an agent registered at another agent's address is unreachable.
    fleet.slipctl(&["agent", "add", "web-9", "--addr", &web2, "--out", fleet.path().join("w9").to_str().unwrap()]).ok();
    let doc = fleet.slipctl(&["--output", "json", "agent", "list"]).code(1).json();
    let web9 = doc.as_array().unwrap().iter().find(|a| a["name"] == "web-9").unwrap();
    assert_eq!(web9["reachable"], false);
    let web2_row = doc.as_array().unwrap().iter().find(|a| a["name"] == "web-2").unwrap();
    assert_eq!(web2_row["reachable"], true);

    // The agents logged the refused handshakes.
    assert!(fleet.agents[0].log().contains("tls handshake refused"), "{}", fleet.agents[0].log());
}
