//! TLS on every link: a node with a client CA serves only callers
//! presenting a certificate that CA signed (and still checks their token);
//! a coordinator serves its users over TLS and reaches nodes over TLS and
//! mutual TLS; plain-text clients are refused where TLS is required.

use arrow_flight::sql::client::FlightSqlServiceClient;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::support::{NodeProcess, generate, query, rows};

/// A test CA with a server certificate for 127.0.0.1/localhost and a
/// client certificate, written as PEM files under `dir`.
pub(crate) struct Pki {
    ca_pem: String,
    dir: std::path::PathBuf,
    client_cert: String,
    client_key: String,
}

impl Pki {
    pub(crate) fn make(dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Its own name: a certificate whose issuer is its subject reads as
        // self-signed to OpenSSL clients (curl).
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Carrow test CA");
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
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), server_cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("client.pem"), client_cert.pem()).unwrap();
        std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();
        Self {
            ca_pem: ca.pem(),
            dir: dir.to_path_buf(),
            client_cert: client_cert.pem(),
            client_key: client_key.serialize_pem(),
        }
    }

    pub(crate) fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }

    /// Server settings; `mutual`: callers need a certificate from the CA.
    fn server(&self, mutual: bool) -> carrow_sql::tls::ServerTls {
        carrow_sql::tls::ServerTls {
            cert_file: self.file("server.pem"),
            key_file: self.file("server.key"),
            client_ca_file: mutual.then(|| self.file("ca.pem")),
        }
    }
}

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
    let pki = Pki::make(&dir.path().join("pki"));
    let config_path = dir.path().join("gp/node.toml");
    let mut config: carrow_node::NodeConfig =
        toml::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config.tls = Some(pki.server(true));
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let node = NodeProcess::start(&config_path);
    let token = std::fs::read_to_string(dir.path().join("secrets/coordinator-gp.token")).unwrap();

    let mut admitted = tls_client(
        node.addr,
        &pki.ca_pem,
        Some((pki.client_cert.clone(), pki.client_key.clone())),
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
    let refused = match tls_client(node.addr, &pki.ca_pem, None).await {
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

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_serves_over_tls_and_federates_nodes_over_tls_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 600, 52);
    let pki = Pki::make(&root.join("pki"));
    // acute: TLS; gp and council: mutual TLS.
    let nodes: Vec<(&str, NodeProcess)> = [("acute", false), ("gp", true), ("council", true)]
        .into_iter()
        .map(|(name, mutual)| {
            let path = root.join(format!("{name}/node.toml"));
            let mut config: carrow_node::NodeConfig =
                toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            config.tls = Some(pki.server(mutual));
            std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
            (name, NodeProcess::start(&path))
        })
        .collect();
    let addrs: Vec<(&str, std::net::SocketAddr)> = nodes
        .iter()
        .map(|(name, node)| (*name, node.addr))
        .collect();
    let coordinator = crate::coordinator::start_coordinator_at(root, &addrs, |config| {
        config.tls = Some(pki.server(false));
        config.console = Some(carrow_coordinator::config::ConsoleConfig {
            listen: "127.0.0.1:0".into(),
            tls: Some(pki.server(false)),
            session_minutes: 5,
            node_logs: Default::default(),
        });
        for node in &mut config.nodes {
            node.url = node.url.replace("http://", "https://");
            let mutual = node.name != "acute";
            node.tls = Some(carrow_sql::tls::ClientTls {
                ca_file: pki.file("ca.pem"),
                cert_file: mutual.then(|| pki.file("client.pem")),
                key_file: mutual.then(|| pki.file("client.key")),
                domain: Some("localhost".into()),
            });
        }
    });
    let password = std::fs::read_to_string(root.join("secrets/planner.token")).unwrap();

    // A federated query over TLS reaches all three nodes.
    let mut planner = tls_client(coordinator.addr, &pki.ca_pem, None)
        .await
        .unwrap();
    planner.handshake("planner", password.trim()).await.unwrap();
    let sql = "SELECT node, count(*) FROM combined.contacts GROUP BY node ORDER BY node";
    let counted = rows(&query(&mut planner, sql).await.unwrap());
    let named: Vec<&str> = counted.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(named, ["acute", "council", "gp"], "{counted:?}");

    // The reference client over TLS, trusting the test CA.
    let out = crate::adbc::adbc_tls(
        &format!("grpc+tls://localhost:{}", coordinator.addr.port()),
        "planner",
        &root.join("secrets/planner.token"),
        Some(&pki.file("ca.pem")),
        serde_json::json!([{ "sql": sql }]),
    );
    assert_eq!(out["results"][0]["ok"], true, "{out}");
    assert_eq!(
        out["results"][0]["rows"].as_array().unwrap().len(),
        3,
        "{out}"
    );

    // The CLI over TLS.
    let out = crate::support::run(&[
        "sql",
        "--url",
        &format!("https://localhost:{}", coordinator.addr.port()),
        "--user",
        "planner",
        "--password-file",
        root.join("secrets/planner.token").to_str().unwrap(),
        "--ca-file",
        pki.file("ca.pem").to_str().unwrap(),
        sql,
    ]);
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("council"));

    // Plain text to the coordinator is refused: no password crosses in clear.
    let plain = crate::support::try_client(coordinator.addr, "planner", password.trim()).await;
    assert!(plain.is_err());
    // The governance console serves HTTPS with the same kind of settings.
    let console = crate::console::console_addr(&root.join("coordinator/coordinator.log"));
    let curl = |url: String, ca: bool| {
        let mut command = std::process::Command::new("curl");
        command.args(["-sS", "-D", "-", "-o", "/dev/null", "--max-time", "10"]);
        if ca {
            command.args(["--cacert", pki.file("ca.pem").to_str().unwrap()]);
        }
        command.arg(url).output().unwrap()
    };
    let out = curl(format!("https://localhost:{}/login", console.port()), true);
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        out.status.success()
            && head.starts_with("http/1.1 200")
            && head.contains("content-security-policy: default-src 'none'"),
        "{head}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !curl(format!("http://localhost:{}/login", console.port()), false)
            .status
            .success()
    );

    // A TLS client that does not trust the coordinator's CA is refused too.
    let other = Pki::make(&root.join("other-pki"));
    let untrusted = match tls_client(coordinator.addr, &other.ca_pem, None).await {
        Err(e) => Some(e),
        Ok(mut c) => c
            .handshake("planner", password.trim())
            .await
            .err()
            .map(|e| e.to_string()),
    };
    assert!(untrusted.is_some());
}
