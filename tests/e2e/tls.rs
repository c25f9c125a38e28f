//! Mutual TLS as an option: a node with a client CA serves only callers
//! presenting a certificate that CA signed (and still checks their token).

use arrow_flight::sql::client::FlightSqlServiceClient;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::support::{NodeProcess, generate, query, rows};

async fn tls_client(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> Result<FlightSqlServiceClient<Channel>, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(FlightSqlServiceClient::new(channel))
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_admits_only_callers_with_a_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 300, 51);
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["coordinator".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    std::fs::write(pki.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(pki.join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(pki.join("server.key"), server_key.serialize_pem()).unwrap();

    let config_path = dir.path().join("gp/node.toml");
    let mut config: carrow_node::NodeConfig =
        toml::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config.tls = Some(carrow_node::config::TlsConfig {
        cert_file: pki.join("server.pem"),
        key_file: pki.join("server.key"),
        client_ca_file: Some(pki.join("ca.pem")),
    });
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let node = NodeProcess::start(&config_path);
    let token = std::fs::read_to_string(dir.path().join("secrets/coordinator-gp.token")).unwrap();

    let mut admitted = tls_client(
        node.addr,
        &ca.pem(),
        Some((client_cert.pem(), client_key.serialize_pem())),
    )
    .await
    .unwrap();
    admitted
        .handshake("coordinator", token.trim())
        .await
        .unwrap();
    let count = rows(
        &query(&mut admitted, "SELECT count(*) FROM registrations")
            .await
            .unwrap(),
    );
    assert!(count[0][0].parse::<u64>().unwrap() > 0);

    // Without a client certificate the TLS handshake or the first call fails.
    let refused = match tls_client(node.addr, &ca.pem(), None).await {
        Err(e) => e,
        Ok(mut c) => c
            .handshake("coordinator", token.trim())
            .await
            .unwrap_err()
            .to_string(),
    };
    assert!(!refused.is_empty());
    // A plain connection is not served either.
    let plain = crate::support::try_client(node.addr, "coordinator", token.trim()).await;
    assert!(plain.is_err());
}
