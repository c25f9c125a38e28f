//! The command line: bad input gets a clear error naming what was wrong.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::support::{carrow, generate, run, stderr};

#[test]
fn unknown_subcommand_is_refused_with_usage() {
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("unrecognized subcommand 'frobnicate'") && err.contains("Usage"),
        "{err}"
    );
}

#[test]
fn keys_generate_writes_owner_only_secret_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("linkage.key");
    let out = run(&["keys", "generate", "--out", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim().len(), 64);
    assert!(text.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The secret itself is never printed.
    assert!(!String::from_utf8_lossy(&out.stdout).contains(text.trim()));
    let again = run(&["keys", "generate", "--out", path.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        text,
        "the first secret is intact"
    );
}

#[test]
fn generate_into_unwritable_directory_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    fs::write(&file, "x").unwrap();
    let target = file.join("out");
    let out = run(&[
        "generate",
        "--out",
        target.to_str().unwrap(),
        "--people",
        "10",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(target.to_str().unwrap()) && err.contains("not usable"),
        "{err}"
    );
}

#[test]
fn node_config_errors_name_the_field_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 200, 5);
    let config = dir.path().join("gp/node.toml");
    let config_arg = config.to_str().unwrap();
    let ok = run(&["node", "--config", config_arg, "--check"]);
    assert!(ok.status.success(), "{}", stderr(&ok));

    // An unknown key.
    let original = fs::read_to_string(&config).unwrap();
    fs::write(
        &config,
        original.replacen("default_project =", "default_projekt =", 1),
    )
    .unwrap();
    let err = stderr(&run(&["node", "--config", config_arg, "--check"]));
    assert!(
        err.contains("default_projekt") && err.contains(config_arg),
        "{err}"
    );

    // Several invalid values are all reported, each by name.
    fs::write(
        &config,
        original
            .replacen("listen = \"127.0.0.1:50052\"", "listen = \"somewhere\"", 1)
            .replacen("name = \"gp\"", "name = \"G P\"", 1),
    )
    .unwrap();
    let err = stderr(&run(&["node", "--config", config_arg, "--check"]));
    assert!(
        err.contains("listen: \"somewhere\"") && err.contains("name: \"G P\""),
        "{err}"
    );

    // Environment overrides apply after the file, and are validated too.
    fs::write(&config, &original).unwrap();
    let out = carrow()
        .args(["node", "--config", config_arg, "--check"])
        .env("CARROW_NODE__LISTEN", "nowhere:x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("listen: \"nowhere:x\""),
        "{}",
        stderr(&out)
    );

    // Not TOML at all.
    fs::write(&config, "this is [not toml").unwrap();
    let err = stderr(&run(&["node", "--config", config_arg, "--check"]));
    assert!(
        err.contains(config_arg) && err.contains("malformed"),
        "{err}"
    );

    let missing = dir.path().join("nope.toml");
    let err = stderr(&run(&[
        "coordinator",
        "--config",
        missing.to_str().unwrap(),
        "--check",
    ]));
    assert!(
        err.contains("nope.toml") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn coordinator_check_refuses_disclosure_weaker_than_every_preset_unless_meant() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 200, 8);
    let path = dir.path().join("coordinator/coordinator.toml");
    let original = fs::read_to_string(&path).unwrap();
    let check = || run(&["coordinator", "--config", path.to_str().unwrap(), "--check"]);
    assert!(check().status.success(), "{}", stderr(&check()));

    let mut config: toml::Table = toml::from_str(&original).unwrap();
    let disclosure = config
        .entry("disclosure")
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .unwrap();
    disclosure.insert("preset".into(), "datashield".into());
    disclosure.insert("min_persons".into(), 2.into());
    disclosure.insert("threshold_margin".into(), 0.into());
    fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let out = check();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("disclosure.min_persons = 2 is weaker than every preset (the weakest has 3)")
            && err.contains("disclosure.threshold_margin = 0")
            && err.contains("allow_weaker_than_presets"),
        "{err}"
    );
    // The coordinator does not start with them either.
    let started = run(&["coordinator", "--config", path.to_str().unwrap()]);
    assert!(stderr(&started).contains("weaker than every preset"));

    config["disclosure"]
        .as_table_mut()
        .unwrap()
        .insert("allow_weaker_than_presets".into(), true.into());
    fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    assert!(check().status.success(), "{}", stderr(&check()));

    // TLS files are opened by --check too.
    config.insert(
        "tls".into(),
        toml::Value::Table(toml::toml! {
            cert_file = "missing-cert.pem"
            key_file = "missing-key.pem"
        }),
    );
    fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let err = stderr(&check());
    assert!(
        err.contains("tls: TLS: cannot read cert_file") && err.contains("missing-cert.pem"),
        "{err}"
    );
}

#[test]
fn linkage_secret_with_wrong_permissions_or_length_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 200, 6);
    let config = dir.path().join("acute/node.toml");
    let secret = dir.path().join("secrets/linkage.key");
    let original = fs::read_to_string(&secret).unwrap();

    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["node", "--config", config.to_str().unwrap(), "--check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("linkage.key") && err.contains("0644") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(
        !err.contains(original.trim()),
        "the secret must never be printed"
    );

    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&secret, &original[..40]).unwrap();
    let err = stderr(&run(&[
        "node",
        "--config",
        config.to_str().unwrap(),
        "--check",
    ]));
    assert!(
        err.contains("linkage.key")
            && err.contains("expected 64 hexadecimal characters")
            && err.contains("found 40"),
        "{err}"
    );
    assert!(
        !err.contains(&original[..40]),
        "the secret must never be printed"
    );
}

#[test]
fn carrow_bench_checks_federated_answers_against_the_central_run_and_links_accurately() {
    // The bench refuses to time answers that differ (exit 1 naming the question).
    let out = run(&["bench", "--records", "4000", "--repeat", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("== summary") && printed.contains("ratio"),
        "{printed}"
    );
    assert_eq!(printed.matches("4000 (").count(), 8, "{printed}");

    let out = run(&["bench", "--linkage-records", "5000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    let f1: f64 = printed
        .split("F1 ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no F1 in {printed}"));
    assert!(f1 >= 0.99, "{printed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_token_writes_a_caller_token_whose_printed_entry_a_node_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 300, 5);
    let token = root.join("secrets/analyst.token");
    let args = |role: &str| {
        vec![
            "keys".to_string(),
            "token".into(),
            "--out".into(),
            token.to_str().unwrap().into(),
            "--name".into(),
            "analyst".into(),
            "--role".into(),
            role.into(),
        ]
    };
    let run_with = |a: Vec<String>| run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let bad = run_with(args("planner"));
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("--role \"planner\""),
        "{}",
        stderr(&bad)
    );
    assert!(!token.exists());

    let out = run_with(args("operator"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::metadata(&token).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let secret = fs::read_to_string(&token).unwrap();
    assert!(
        !printed.contains(secret.trim()),
        "the token itself is never printed"
    );
    let entry = &printed[printed.find("[[clients]]").expect("the entry")..];
    // The printed entry, appended to a node's configuration, lets the
    // caller in with the token.
    let config = root.join("gp/node.toml");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(&config, format!("{text}\n{entry}")).unwrap();
    let node = crate::support::NodeProcess::start(&config);
    let mut analyst = crate::support::client(node.addr, "analyst", &token).await;
    let rows = crate::support::query(&mut analyst, "SELECT count(*) FROM registrations")
        .await
        .unwrap();
    assert_eq!(rows[0].num_rows(), 1);
    // And never overwrites.
    let again = run_with(args("operator"));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(fs::read_to_string(&token).unwrap(), secret);
}

#[test]
fn node_check_opens_every_source_and_names_the_one_missing() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 200, 6);
    let config = dir.path().join("council/node.toml");
    let ok = run(&["node", "--config", config.to_str().unwrap(), "--check"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    fs::remove_file(dir.path().join("council/care_packages.csv")).unwrap();
    let out = run(&["node", "--config", config.to_str().unwrap(), "--check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("sources.care_packages") && err.contains("care_packages.csv"),
        "{err}"
    );
}

#[test]
fn coordinator_check_reads_every_node_token_and_names_the_one_missing() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 200, 6);
    let config = dir.path().join("coordinator/coordinator.toml");
    let ok = run(&[
        "coordinator",
        "--config",
        config.to_str().unwrap(),
        "--check",
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    fs::remove_file(dir.path().join("secrets/coordinator-gp.token")).unwrap();
    let out = run(&[
        "coordinator",
        "--config",
        config.to_str().unwrap(),
        "--check",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("nodes[1].token_file") && err.contains("coordinator-gp.token"),
        "{err}"
    );
}
