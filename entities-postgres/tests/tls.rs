//! TLS as libpq reads it from the URL (`sslmode`, `sslrootcert`), against private servers
//! with `ssl=on` (a certificate for `localhost` only, from a CA made here) and `ssl=off`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use entities_core::Store;
use entities_postgres::test_server::{ServerOptions, TestServer};
use entities_postgres::{Error, PostgresStore, SslMode, TlsError};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A server with `ssl=on`, and the files of the CA that signed its certificate and of
/// another CA.
struct TlsServer {
    server: TestServer,
    ca: PathBuf,
    other_ca: PathBuf,
    _files: tempfile::TempDir,
}

static TLS_SERVER: Mutex<Weak<TlsServer>> = Mutex::new(Weak::new());

/// A CA: its certificate (PEM) and what signs with it.
fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("a CA key");
    let cert = params.self_signed(&key).expect("a CA certificate");
    (cert.pem(), Issuer::new(params, key))
}

/// The running TLS server shared by the tests that run at the same time, or a new one; `None`
/// (after one line saying so) when there is none and none is required.
fn tls_server(what: &str) -> Option<Arc<TlsServer>> {
    let mut shared = TLS_SERVER.lock().unwrap();
    if let Some(server) = shared.upgrade() {
        return Some(server);
    }
    let (ca_pem, issuer) = new_ca("entities test CA");
    let (other_ca_pem, _) = new_ca("another CA");
    // SAN: the DNS name `localhost` only, so 127.0.0.1 is a wrong host.
    let params = CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
    let key = KeyPair::generate().expect("a server key");
    let cert = params
        .signed_by(&key, &issuer)
        .expect("a server certificate");
    let server = TestServer::start_with_or_skip(
        what,
        ServerOptions::new().tls(cert.pem(), key.serialize_pem()),
    )?;
    let files = tempfile::tempdir().expect("a directory");
    let ca = files.path().join("ca.pem");
    let other_ca = files.path().join("other-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    std::fs::write(&other_ca, other_ca_pem).unwrap();
    let server = Arc::new(TlsServer {
        server,
        ca,
        other_ca,
        _files: files,
    });
    *shared = Arc::downgrade(&server);
    Some(server)
}

/// `url` (of the test server, host 127.0.0.1) with host `host` and query `query`.
fn with(url: &str, host: &str, query: &str) -> String {
    format!(
        "{}?{query}",
        url.replacen("@127.0.0.1:", &format!("@{host}:"), 1)
    )
}

/// The store's connections (pool and listener) to its database, as the server sees them:
/// (with TLS, without). Waits until the listener's connection is there too.
async fn tls_of_connections(server: &TestServer, store_url: &str) -> (i64, i64) {
    let database = store_url.rsplit('/').next().unwrap();
    let database = database.split('?').next().unwrap().to_string();
    let (client, connection) =
        tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
            .await
            .expect("a plain connection to look");
    tokio::spawn(connection);
    let mut seen = (0, 0);
    for _ in 0..100 {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.datname = $1 AND a.backend_type = 'client backend'",
                &[&database],
            )
            .await
            .expect("pg_stat_ssl");
        seen = (row.get(0), row.get(1));
        if seen.0 + seen.1 >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

#[tokio::test]
async fn verify_full_with_the_right_ca_and_host_connects_over_tls() {
    let Some(tls) = tls_server("the TLS test verify-full") else {
        return;
    };
    let url = tls.server.create_database().await.expect("a new database");
    let store = PostgresStore::connect(&with(
        &url,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", tls.ca.display()),
    ))
    .await
    .expect("verify-full connects");
    store.ping().await.expect("a query runs");
    let (with_tls, without) = tls_of_connections(&tls.server, &url).await;
    assert!(
        with_tls >= 2 && without == 0,
        "the pool's and the listener's connections use TLS: {with_tls} with, {without} without"
    );
    Store::shutdown(&store).await;

    // The key=value form too.
    let config: tokio_postgres::Config = url.parse().unwrap();
    let port = config.get_ports()[0];
    let database = config.get_dbname().unwrap();
    let store = PostgresStore::connect(&format!(
        "host=localhost port={port} user=postgres dbname={database} sslmode=verify-full sslrootcert='{}'",
        tls.ca.display()
    ))
    .await
    .expect("verify-full connects (key=value form)");
    store.ping().await.expect("a query runs");
    Store::shutdown(&store).await;
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_for_another_host() {
    let Some(tls) = tls_server("the TLS test verify-full, wrong host") else {
        return;
    };
    let url = tls.server.create_database().await.expect("a new database");
    let err = PostgresStore::connect(&with(
        &url,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", tls.ca.display()),
    ))
    .await
    .expect_err("the certificate names localhost only");
    let text = err.to_string();
    match &err {
        Error::Tls(TlsError::WrongHost { host, .. }) => assert_eq!(host, "127.0.0.1"),
        other => panic!("not a wrong host: {other:?}"),
    }
    assert!(
        text.contains("not valid for host 127.0.0.1 (it names localhost;"),
        "{text}"
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "the cause is kept"
    );
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_of_an_unknown_authority() {
    let Some(tls) = tls_server("the TLS test verify-full, unknown authority") else {
        return;
    };
    let url = tls.server.create_database().await.expect("a new database");
    let err = PostgresStore::connect(&with(
        &url,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", tls.other_ca.display()),
    ))
    .await
    .expect_err("another CA signed the certificate");
    let text = err.to_string();
    assert!(
        matches!(err, Error::Tls(TlsError::UnknownAuthority { .. })),
        "{err:?}"
    );
    assert!(
        text.contains("unknown authority") && text.contains("other-ca.pem"),
        "{text}"
    );

    // `require` with `sslrootcert` verifies the chain too, as libpq.
    let err = PostgresStore::connect(&with(
        &url,
        "localhost",
        &format!("sslmode=require&sslrootcert={}", tls.other_ca.display()),
    ))
    .await
    .expect_err("require with sslrootcert verifies the chain");
    assert!(
        matches!(err, Error::Tls(TlsError::UnknownAuthority { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn verify_ca_require_and_prefer_do_not_check_the_host_name() {
    let Some(tls) = tls_server("the TLS test verify-ca") else {
        return;
    };
    let url = tls.server.create_database().await.expect("a new database");
    let store = PostgresStore::connect(&with(
        &url,
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", tls.ca.display()),
    ))
    .await
    .expect("verify-ca connects to 127.0.0.1");
    store.ping().await.expect("a query runs");
    Store::shutdown(&store).await;

    // `require` without `sslrootcert`, and `prefer` (also the default): TLS, nothing
    // verified.
    for store_url in [
        with(&url, "127.0.0.1", "sslmode=require"),
        with(&url, "127.0.0.1", "sslmode=prefer"),
        url.clone(),
    ] {
        let store = PostgresStore::connect(&store_url)
            .await
            .unwrap_or_else(|e| panic!("{store_url} connects: {e}"));
        store.ping().await.expect("a query runs");
        let (with_tls, without) = tls_of_connections(&tls.server, &url).await;
        assert!(
            with_tls >= 2 && without == 0,
            "{store_url}: {with_tls} with, {without} without"
        );
        Store::shutdown(&store).await;
    }
}

#[tokio::test]
async fn require_refuses_a_server_without_tls_where_prefer_and_disable_connect() {
    let Some(server) = TestServer::start_with_or_skip(
        "the TLS test against a server without TLS",
        ServerOptions::new(),
    ) else {
        return;
    };
    let url = server.create_database().await.expect("a new database");
    for mode in ["require", "verify-ca", "verify-full"] {
        let err = PostgresStore::connect(&format!("{url}?sslmode={mode}"))
            .await
            .expect_err("TLS is demanded");
        let text = err.to_string();
        match &err {
            Error::Tls(TlsError::NotSupported { mode: m, .. }) => {
                assert_eq!(m.to_string(), mode);
            }
            other => panic!("not a refusal for no TLS: {other:?}"),
        }
        assert!(
            text.contains("does not support TLS") && text.contains(&format!("sslmode={mode}")),
            "{text}"
        );
    }
    for query in ["?sslmode=prefer", "", "?sslmode=disable"] {
        let store = PostgresStore::connect(&format!("{url}{query}"))
            .await
            .unwrap_or_else(|e| panic!("{query:?} connects without TLS: {e}"));
        store.ping().await.expect("a query runs");
        let (with_tls, without) = tls_of_connections(&server, &url).await;
        assert!(
            with_tls == 0 && without >= 2,
            "{with_tls} with, {without} without"
        );
        Store::shutdown(&store).await;
    }
    assert_eq!(SslMode::Prefer.to_string(), "prefer");
}
