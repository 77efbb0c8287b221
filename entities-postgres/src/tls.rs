//! TLS as libpq reads it from the connection URL: `sslmode` and `sslrootcert` are taken out of
//! the URL (tokio-postgres knows neither `verify-ca`, `verify-full` nor `sslrootcert`), and a
//! rustls connector (the `ring` provider) verifies what the mode asks for.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Why a TLS connection was refused, or could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// `sslmode` or `sslrootcert` in the URL has a value this crate does not accept.
    #[error("invalid TLS parameter in the PostgreSQL URL: {0}")]
    Parameter(String),
    /// The server's certificate chain does not lead to a trusted root.
    #[error("TLS refused: the server's certificate was issued by an unknown authority (checked against {roots})")]
    UnknownAuthority {
        /// The roots checked: the `sslrootcert` path, or "the system's roots".
        roots: String,
        /// The failed connection.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server's certificate does not name the host connected to (`sslmode=verify-full`).
    #[error("TLS refused: the server's certificate is not valid for host {host} (it names {presented}; sslmode=verify-full)")]
    WrongHost {
        /// The host connected to.
        host: String,
        /// The names in the certificate, comma-separated.
        presented: String,
        /// The failed connection.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server's certificate was refused for another reason (expired, bad signature, ...).
    #[error("TLS refused: the server's certificate is invalid: {reason}")]
    Certificate {
        /// What rustls found.
        reason: String,
        /// The failed connection.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server does not offer TLS, but the `sslmode` demands it.
    #[error("TLS refused: the server does not support TLS, but sslmode={mode} demands it")]
    NotSupported {
        /// The `sslmode` given.
        mode: SslMode,
        /// The failed connection.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The `sslrootcert` file cannot be read or holds no usable PEM certificate.
    #[error("cannot use the root certificate file {path}: {source}")]
    RootCert {
        /// The `sslrootcert` path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No root certificate of the system could be loaded (and no `sslrootcert` was given).
    #[error("cannot load the system's root certificates (give sslrootcert=PATH): {0}")]
    SystemRoots(#[source] io::Error),
}

/// `sslmode`, as libpq reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// Plain connections only.
    Disable,
    /// TLS when the server offers it, without verification; plain otherwise (the default).
    Prefer,
    /// TLS, without verification unless `sslrootcert` is given (then as `VerifyCa`).
    Require,
    /// TLS, the chain verified against the roots; the host name not checked.
    VerifyCa,
    /// TLS, the chain and the host name verified.
    VerifyFull,
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, TlsError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(TlsError::Parameter(
                    "sslmode=allow is not supported (use disable or prefer)".into(),
                ))
            }
            other => {
                return Err(TlsError::Parameter(format!(
                "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            )))
            }
        })
    }
}

/// Where trusted roots come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Roots {
    /// The system's root certificates (no `sslrootcert`, or `sslrootcert=system`).
    System,
    /// A PEM file.
    File(PathBuf),
}

impl fmt::Display for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Roots::System => f.write_str("the system's roots"),
            Roots::File(path) => write!(f, "sslrootcert {}", path.display()),
        }
    }
}

/// The TLS parameters of a connection URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub(crate) mode: SslMode,
    pub(crate) roots: Roots,
    /// `sslrootcert` was given (with `require`, the chain is then verified).
    root_given: bool,
}

impl TlsSettings {
    /// Takes `sslmode` and `sslrootcert` out of `url` (the `postgres://` form or the
    /// `key=value` form): returns the URL without them, for tokio-postgres to parse, and the
    /// settings. Without `sslmode`, the mode is `prefer` (`verify-full` with
    /// `sslrootcert=system`), as libpq.
    pub(crate) fn split(url: &str) -> Result<(String, Self), TlsError> {
        let (rest, mode, root) =
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                split_url(url)?
            } else {
                split_key_values(url)?
            };
        let root = root.filter(|r| !r.is_empty());
        let system = root.as_deref() == Some("system");
        let mode = match mode {
            Some(mode) => SslMode::parse(&mode)?,
            None if system => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if system && mode != SslMode::VerifyFull {
            return Err(TlsError::Parameter(format!(
                "sslmode={mode} may not be used with sslrootcert=system (use verify-full)"
            )));
        }
        let roots = match root.as_deref() {
            None | Some("system") => Roots::System,
            Some(path) => Roots::File(PathBuf::from(path)),
        };
        Ok((
            rest,
            Self {
                mode,
                roots,
                root_given: root.is_some(),
            },
        ))
    }

    /// The mode tokio-postgres negotiates with.
    pub(crate) fn negotiation(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }

    /// The connector: it verifies the chain (`verify-ca`, or `require` with `sslrootcert`),
    /// the chain and the name (`verify-full`), or nothing but the handshake's signatures.
    /// Reads the roots now.
    pub(crate) fn connector(&self) -> Result<MakeRustlsConnect, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            SslMode::VerifyFull => webpki(self.load_roots()?, &provider)?,
            SslMode::VerifyCa => Arc::new(ChainOnly(webpki(self.load_roots()?, &provider)?)),
            SslMode::Require if self.root_given => {
                Arc::new(ChainOnly(webpki(self.load_roots()?, &provider)?))
            }
            SslMode::Disable | SslMode::Prefer | SslMode::Require => {
                Arc::new(AnyCertificate(provider.clone()))
            }
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Parameter(format!("no TLS protocol version: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // What libpq sends since PostgreSQL 17 (needed by `sslnegotiation=direct`).
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(MakeRustlsConnect::new(config))
    }

    fn load_roots(&self) -> Result<RootCertStore, TlsError> {
        let mut store = RootCertStore::empty();
        match &self.roots {
            Roots::File(path) => {
                let failed = |source| TlsError::RootCert {
                    path: path.clone(),
                    source,
                };
                let pem = std::fs::read(path).map_err(failed)?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert =
                        cert.map_err(|e| failed(io::Error::new(io::ErrorKind::InvalidData, e)))?;
                    store
                        .add(cert)
                        .map_err(|e| failed(io::Error::new(io::ErrorKind::InvalidData, e)))?;
                }
                if store.is_empty() {
                    return Err(failed(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "no PEM certificate in the file",
                    )));
                }
            }
            Roots::System => {
                let found = rustls_native_certs::load_native_certs();
                store.add_parsable_certificates(found.certs);
                if store.is_empty() {
                    let why = found
                        .errors
                        .first()
                        .map_or("none found".to_string(), std::string::ToString::to_string);
                    return Err(TlsError::SystemRoots(io::Error::new(
                        io::ErrorKind::NotFound,
                        why,
                    )));
                }
            }
        }
        Ok(store)
    }

    /// The TLS refusal `err` stands for, or `err` back when it is none: a certificate that
    /// rustls refused (found down `err`'s sources), or tokio-postgres's "server does not
    /// support TLS".
    pub(crate) fn classify(
        &self,
        err: tokio_postgres::Error,
    ) -> Result<TlsError, tokio_postgres::Error> {
        let mut certificate = None;
        let mut unsupported = false;
        let mut cause: Option<&(dyn StdError + 'static)> = Some(&err);
        while let Some(e) = cause {
            let rustls_error = e.downcast_ref::<rustls::Error>().or_else(|| {
                e.downcast_ref::<io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            });
            if let Some(rustls::Error::InvalidCertificate(c)) = rustls_error {
                certificate = Some(c.clone());
                break;
            }
            // tokio-postgres's own words (`connect_tls.rs`), its only error for a server that
            // answered the TLS request with 'N'; the error kind is not public.
            if e.to_string() == "server does not support TLS" {
                unsupported = true;
                break;
            }
            cause = e.source();
        }
        match certificate {
            Some(CertificateError::UnknownIssuer) => Ok(TlsError::UnknownAuthority {
                roots: self.roots.to_string(),
                source: err,
            }),
            Some(CertificateError::NotValidForNameContext {
                expected,
                presented,
            }) => Ok(TlsError::WrongHost {
                host: expected.to_str().into_owned(),
                presented: presented_names(&presented),
                source: err,
            }),
            Some(CertificateError::NotValidForName) => Ok(TlsError::WrongHost {
                host: "the host connected to".into(),
                presented: "other names".into(),
                source: err,
            }),
            Some(other) => Ok(TlsError::Certificate {
                reason: rustls::Error::InvalidCertificate(other).to_string(),
                source: err,
            }),
            None if unsupported => Ok(TlsError::NotSupported {
                mode: self.mode,
                source: err,
            }),
            None => Err(err),
        }
    }
}

/// The names rustls found in a certificate (`DnsName("db.internal")`, `IpAddress(10.0.0.1)`)
/// as plain names.
fn presented_names(presented: &[String]) -> String {
    if presented.is_empty() {
        return "no host name".into();
    }
    presented
        .iter()
        .map(|name| {
            name.strip_suffix(')')
                .and_then(|n| n.split_once('('))
                .map_or(name.as_str(), |(_, inner)| inner.trim_matches('"'))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn webpki(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Parameter(format!("cannot verify with these roots: {e}")))
}

/// `verify-ca`: rustls' WebPKI verification, but a certificate for another name passes (the
/// name is checked after the chain, so the chain was verified).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require`: any certificate, but the handshake's signatures are checked (the
/// peer holds the key of the certificate it sent).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `postgres://...?...`: the URL without the two parameters, and their (decoded) values.
fn split_url(url: &str) -> Result<(String, Option<String>, Option<String>), TlsError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None, None));
    };
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(key)?.as_str() {
            "sslmode" => mode = Some(percent_decode(value)?),
            "sslrootcert" => root = Some(percent_decode(value)?),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, mode, root))
}

fn percent_decode(s: &str) -> Result<String, TlsError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(byte) = hex {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| TlsError::Parameter(format!("{s:?} is not UTF-8 once decoded")))
}

/// `host=... sslmode=...`: the string without the two parameters, and their values. Values
/// may be quoted (`'...'`, with `\'` and `\\`) as libpq allows; a string this does not
/// understand is left whole, for tokio-postgres to judge.
fn split_key_values(s: &str) -> Result<(String, Option<String>, Option<String>), TlsError> {
    let Some(pairs) = key_values(s) else {
        return Ok((s.to_string(), None, None));
    };
    let (mut mode, mut root) = (None, None);
    let mut rest = String::new();
    for (key, value, span) in pairs {
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => {
                if !rest.is_empty() {
                    rest.push(' ');
                }
                rest.push_str(&s[span]);
            }
        }
    }
    Ok((rest, mode, root))
}

/// A pair of a `key=value` string: key, unescaped value, and the pair's span in the string.
type Pair = (String, String, std::ops::Range<usize>);

/// The pairs of a `key=value` string, or `None` when it is not of that form.
fn key_values(s: &str) -> Option<Vec<Pair>> {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|c| c.1);
    let offset = |i: usize| chars.get(i).map_or(s.len(), |c| c.0);
    let mut pairs = Vec::new();
    let mut i = 0;
    loop {
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i).is_none() {
            return Some(pairs);
        }
        let start = i;
        let mut key = String::new();
        while let Some(c) = at(i).filter(|c| c.is_alphanumeric() || *c == '_') {
            key.push(c);
            i += 1;
        }
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if key.is_empty() || at(i) != Some('=') {
            return None;
        }
        i += 1;
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let mut value = String::new();
        if at(i) == Some('\'') {
            i += 1;
            loop {
                match at(i)? {
                    '\'' => break,
                    '\\' => {
                        value.push(at(i + 1)?);
                        i += 2;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
            i += 1;
        } else {
            while let Some(c) = at(i).filter(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(at(i + 1)?);
                    i += 2;
                } else {
                    value.push(c);
                    i += 1;
                }
            }
        }
        pairs.push((key, value, offset(start)..offset(i)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, SslMode, Roots) {
        let (rest, settings) = TlsSettings::split(url).expect("valid");
        (rest, settings.mode, settings.roots)
    }

    #[test]
    fn the_url_form_loses_its_tls_parameters() {
        let (rest, mode, roots) = split(
            "postgres://app@db.internal:5432/app?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem",
        );
        assert_eq!(rest, "postgres://app@db.internal:5432/app");
        assert_eq!(mode, SslMode::VerifyFull);
        assert_eq!(roots, Roots::File("/etc/ssl/db-ca.pem".into()));

        let (rest, mode, roots) =
            split("postgresql://h/db?application_name=x&sslrootcert=%2Ftmp%2Fca%20b.pem&sslmode=verify-ca&connect_timeout=3");
        assert_eq!(
            rest,
            "postgresql://h/db?application_name=x&connect_timeout=3"
        );
        assert_eq!(mode, SslMode::VerifyCa);
        assert_eq!(roots, Roots::File("/tmp/ca b.pem".into()));
        assert!(rest.parse::<tokio_postgres::Config>().is_ok());
    }

    #[test]
    fn without_sslmode_the_mode_is_prefer_as_libpq() {
        let (rest, mode, roots) = split("postgres://app@h/app");
        assert_eq!(
            (rest.as_str(), mode, roots),
            ("postgres://app@h/app", SslMode::Prefer, Roots::System)
        );
        let (_, mode, _) = split("postgres://app@h/app?sslrootcert=/ca.pem");
        assert_eq!(mode, SslMode::Prefer);
        let (_, mode, roots) = split("host=h");
        assert_eq!((mode, roots), (SslMode::Prefer, Roots::System));
    }

    #[test]
    fn sslrootcert_system_means_verify_full_as_libpq() {
        let (_, mode, roots) = split("postgres://h/db?sslrootcert=system");
        assert_eq!((mode, roots), (SslMode::VerifyFull, Roots::System));
        let err = TlsSettings::split("postgres://h/db?sslrootcert=system&sslmode=require")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslrootcert=system"), "{err}");
    }

    #[test]
    fn the_key_value_form_loses_its_tls_parameters() {
        let (rest, mode, roots) = split(
            "host=localhost sslmode = verify-full  sslrootcert='/etc/my ssl/ca.pem' user=app dbname='a b'",
        );
        assert_eq!(rest, "host=localhost user=app dbname='a b'");
        assert_eq!(mode, SslMode::VerifyFull);
        assert_eq!(roots, Roots::File("/etc/my ssl/ca.pem".into()));
        let config: tokio_postgres::Config = rest.parse().expect("tokio-postgres parses the rest");
        assert_eq!(config.get_dbname(), Some("a b"));

        let (rest, mode, roots) = split(r"sslrootcert=/a\ b.pem sslmode=require");
        assert_eq!(rest, "");
        assert_eq!(mode, SslMode::Require);
        assert_eq!(roots, Roots::File("/a b.pem".into()));
    }

    #[test]
    fn a_bad_sslmode_is_a_clear_error() {
        for url in [
            "postgres://h/db?sslmode=verify",
            "host=h sslmode=verify",
            "postgres://h/db?sslmode=VERIFY-FULL",
        ] {
            let err = TlsSettings::split(url).unwrap_err();
            assert!(matches!(err, TlsError::Parameter(_)), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains("sslmode=")
                    && text
                        .contains("is not one of disable, prefer, require, verify-ca, verify-full"),
                "{text}"
            );
        }
        let err = TlsSettings::split("postgres://h/db?sslmode=allow").unwrap_err();
        assert!(
            err.to_string().contains("sslmode=allow is not supported"),
            "{err}"
        );
    }

    #[test]
    fn modes_map_onto_tokio_postgres() {
        use tokio_postgres::config::SslMode as Tp;
        for (mode, expected) in [
            ("disable", Tp::Disable),
            ("prefer", Tp::Prefer),
            ("require", Tp::Require),
            ("verify-ca", Tp::Require),
            ("verify-full", Tp::Require),
        ] {
            let (_, settings) =
                TlsSettings::split(&format!("postgres://h/db?sslmode={mode}")).unwrap();
            assert_eq!(settings.negotiation(), expected, "{mode}");
            assert_eq!(settings.mode.to_string(), mode);
        }
    }

    #[test]
    fn presented_names_are_plain() {
        let names = [
            r#"DnsName("localhost")"#.to_string(),
            "IpAddress(10.0.0.1)".into(),
        ];
        assert_eq!(presented_names(&names), "localhost, 10.0.0.1");
        assert_eq!(presented_names(&[]), "no host name");
    }

    #[test]
    fn a_missing_or_empty_root_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let (_, settings) = TlsSettings::split(&format!(
            "postgres://h/db?sslmode=verify-full&sslrootcert={}",
            missing.display()
        ))
        .unwrap();
        let err = settings.connector().err().expect("refused");
        assert!(matches!(err, TlsError::RootCert { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let (_, settings) = TlsSettings::split(&format!(
            "postgres://h/db?sslmode=verify-ca&sslrootcert={}",
            empty.display()
        ))
        .unwrap();
        let err = settings.connector().err().expect("refused").to_string();
        assert!(
            err.contains("empty.pem") && err.contains("no PEM certificate"),
            "{err}"
        );

        // Not read unless the mode verifies.
        let (_, settings) = TlsSettings::split(&format!(
            "postgres://h/db?sslmode=prefer&sslrootcert={}",
            missing.display()
        ))
        .unwrap();
        assert!(settings.connector().is_ok());
    }
}
