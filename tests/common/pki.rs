//! Certificates made for a test: a CA of its own, server and client
//! certificates signed by it (one expired), written into a workspace.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::Workspace;

pub const TOKEN: &str = "tls-test-token-0123456789";

/// A certificate authority of the test's own.
pub fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("nova test CA {name}"));
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `names` signed by `ca`, expired when `expired`; its PEM and its key's.
pub fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    expired: bool,
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Certificates written into the workspace: `ca.pem` (trusted), `other-ca.pem`
/// (not), a server pair for localhost, 127.0.0.1 and 10.99.0.1, an expired one, and
/// client pairs signed by each CA.
pub fn pki(ws: &Workspace) {
    let ca = authority("A");
    let other = authority("B");
    ws.write("ca.pem", &ca.pem());
    ws.write("other-ca.pem", &other.pem());
    // 10.99.0.1: the server host of the multi-host test bed (netns.rs).
    let (cert, key) = leaf(&ca, &["localhost", "127.0.0.1", "10.99.0.1"], false);
    ws.write("server.pem", &cert);
    ws.write("server.key", &key);
    let (cert, key) = leaf(&ca, &["localhost", "127.0.0.1"], true);
    ws.write("expired.pem", &cert);
    ws.write("expired.key", &key);
    let (cert, key) = leaf(&ca, &["worker-1"], false);
    ws.write("client.pem", &cert);
    ws.write("client.key", &key);
    let (cert, key) = leaf(&other, &["intruder"], false);
    ws.write("stranger.pem", &cert);
    ws.write("stranger.key", &key);
    ws.write("token", TOKEN);
}
