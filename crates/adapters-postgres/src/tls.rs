//! TLS to PostgreSQL (rustls), with libpq's meaning of `sslmode` and `sslrootcert` in
//! `DATABASE_URL`:
//!
//! - `disable`: plain TCP;
//! - `prefer` (the default) and `require`: encrypted (`prefer` falls back to plain TCP when the
//!   server has no TLS), the certificate unchecked unless `sslrootcert` is given, as libpq does;
//! - `verify-ca`: the chain must lead to a trusted root; `verify-full`: and name the host.
//!
//! Trusted roots are `sslrootcert` (a PEM file) or else the system's. tokio-postgres knows only
//! `disable`, `prefer` and `require` and no `sslrootcert`, so both are taken out of the URL here
//! and the verification is the connector's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values that rdev-api supports (`allow` is not one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it.
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS with a certificate chain leading to a trusted root.
    VerifyCa,
    /// TLS with a trusted chain naming the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(format!(
                "sslmode `{other}` is not supported: use disable, prefer, require, verify-ca or verify-full"
            )),
        }
    }

    /// What tokio-postgres is told: whether TLS is attempted and whether it is a must.
    fn driver_mode(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require | Self::VerifyCa | Self::VerifyFull => "require",
        }
    }
}

/// The TLS settings of a `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    /// `sslmode`, `prefer` when absent.
    pub(crate) mode: SslMode,
    /// `sslrootcert`: a PEM file of trusted roots.
    pub(crate) root_cert: Option<PathBuf>,
}

/// Splits `url` into what tokio-postgres parses (with an `sslmode` it knows) and the TLS
/// settings it does not.
pub(crate) fn split_url(url: &str) -> Result<(String, TlsSettings), String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut settings = TlsSettings { mode: SslMode::Prefer, root_cert: None };
    let mut kept: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || percent_decode_str(value).decode_utf8().map(|v| v.into_owned()).map_err(|e| e.to_string());
        match key {
            "sslmode" => settings.mode = SslMode::parse(&decoded()?)?,
            "sslrootcert" => settings.root_cert = Some(PathBuf::from(decoded()?)),
            _ => kept.push(pair.to_owned()),
        }
    }
    kept.push(format!("sslmode={}", settings.mode.driver_mode()));
    Ok((format!("{base}?{}", kept.join("&")), settings))
}

/// The connector for `settings`.
pub(crate) fn connector(settings: &TlsSettings) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (settings.mode, &settings.root_cert) {
        (SslMode::Disable | SslMode::Prefer | SslMode::Require, None) => Arc::new(Unverified(provider)),
        (SslMode::Disable | SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, root_cert) => {
            Arc::new(ChainOnly(webpki(roots(root_cert.as_deref())?, provider)?))
        }
        (SslMode::VerifyFull, root_cert) => webpki(roots(root_cert.as_deref())?, provider)?,
    };
    let config = builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The roots in the PEM file `path`, or the system's.
fn roots(path: Option<&Path>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = match path {
        Some(path) => CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?,
        None => rustls_native_certs::load_native_certs().certs,
    };
    let (added, _unusable) = store.add_parsable_certificates(certs);
    if added == 0 {
        let source = path.map_or_else(|| "the system's trust store".to_owned(), |p| p.display().to_string());
        return Err(format!("no usable root certificate in {source}"));
    }
    Ok(store)
}

fn webpki(roots: RootCertStore, provider: Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("TLS verifier: {e}"))
}

/// libpq's `require` without a root file: encryption against eavesdropping, no check of who
/// answers. The handshake's signatures are still checked, so the session is sound.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
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
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// libpq's `verify-ca`: the full check except the host name.
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
        // webpki checks the chain first and the name last, so a name error means a good chain.
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            checked => checked,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, TlsSettings) {
        split_url(url).expect("valid url")
    }

    #[test]
    fn tls_settings_leave_the_url_and_the_rest_stays() {
        let (url, tls) =
            split("postgres://u@h/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20b.pem");
        assert_eq!(url, "postgres://u@h/db?application_name=x&sslmode=require");
        assert_eq!(tls, TlsSettings { mode: SslMode::VerifyFull, root_cert: Some("/etc/ca b.pem".into()) });
        let (url, tls) = split("postgres://u@h/db");
        assert_eq!(url, "postgres://u@h/db?sslmode=prefer");
        assert_eq!(tls, TlsSettings { mode: SslMode::Prefer, root_cert: None });
        assert_eq!(split("postgres://u@h/db?sslmode=disable").0, "postgres://u@h/db?sslmode=disable");
        assert_eq!(split("postgres://u@h/db?sslmode=verify-ca").1.mode, SslMode::VerifyCa);
    }

    #[test]
    fn unknown_modes_are_refused_by_name() {
        let refused = split_url("postgres://u@h/db?sslmode=allow").expect_err("allow is not supported");
        assert!(refused.contains("sslmode `allow`"), "{refused}");
        assert!(split_url("postgres://u@h/db?sslmode=%FF").is_err(), "not UTF-8");
    }

    #[test]
    fn a_missing_or_empty_root_file_is_a_configuration_error() {
        let missing = TlsSettings { mode: SslMode::VerifyFull, root_cert: Some("/nonexistent/ca.pem".into()) };
        let error = connector(&missing).err().expect("refused");
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
        let dir = tempfile::tempdir().expect("dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let error = connector(&TlsSettings { mode: SslMode::VerifyCa, root_cert: Some(empty) }).err().expect("refused");
        assert!(error.contains("no usable root certificate"), "{error}");
        assert!(connector(&TlsSettings { mode: SslMode::Require, root_cert: None }).is_ok());
    }
}

/// Against a real server with TLS on (a dedicated throwaway cluster): what each mode accepts.
#[cfg(test)]
#[cfg(feature = "testing")]
mod server_tests {
    use diesel::sql_types::Bool;
    use diesel::QueryableByName;
    use diesel_async::RunQueryDsl;
    use domain::ports::HealthCheck;

    use crate::testing::TestCluster;
    use crate::{connection, PgSignalBus, PgStore};

    struct Pki {
        ca_pem: String,
        cert_pem: String,
        key_pem: String,
    }

    /// A CA and a server certificate it signed for `host`.
    fn pki(host: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "rdev test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("server key");
        let params = rcgen::CertificateParams::new(vec![host.to_owned()]).expect("server params");
        let cert = params.signed_by(&key, &*ca).expect("server certificate");
        Pki { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    #[derive(QueryableByName)]
    struct Ssl {
        #[diesel(sql_type = Bool)]
        ssl: bool,
    }

    /// Whether a connection to `url` is encrypted, or why none could be opened.
    async fn encrypted(url: &str) -> Result<bool, String> {
        let mut conn = connection::establish(url).await.map_err(|e| e.to_string())?;
        let row: Ssl = diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .get_result(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.ssl)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_sslmode_encrypts_and_verifies_as_libpq_does() {
        let cluster = TestCluster::start_dedicated();
        let ours = pki("localhost");
        cluster.enable_tls(&ours.cert_pem, &ours.key_pem);
        let dir = tempfile::tempdir().expect("dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &ours.ca_pem).expect("ca.pem");
        let stranger = dir.path().join("other-ca.pem");
        std::fs::write(&stranger, pki("localhost").ca_pem).expect("other-ca.pem");
        let by_ip = cluster.url_for("postgres");
        let by_name = by_ip.replace("127.0.0.1", "localhost");
        let (ca, stranger) = (ca.display(), stranger.display());

        assert_eq!(encrypted(&by_ip).await, Ok(true), "prefer (the default) takes TLS when offered");
        assert_eq!(encrypted(&format!("{by_ip}?sslmode=require")).await, Ok(true), "require checks no certificate");
        assert_eq!(encrypted(&format!("{by_ip}?sslmode=disable")).await, Ok(false));
        let full = format!("{by_name}?sslmode=verify-full&sslrootcert={ca}");
        assert_eq!(encrypted(&full).await, Ok(true), "the right CA and the right name");
        let wrong_name = encrypted(&format!("{by_ip}?sslmode=verify-full&sslrootcert={ca}")).await;
        assert!(wrong_name.as_ref().is_err_and(|e| e.contains("certificate")), "{wrong_name:?}");
        let chain_only = encrypted(&format!("{by_ip}?sslmode=verify-ca&sslrootcert={ca}")).await;
        assert_eq!(chain_only, Ok(true), "verify-ca does not look at the name");
        for untrusted in [
            format!("{by_name}?sslmode=verify-ca&sslrootcert={stranger}"),
            format!("{by_name}?sslmode=require&sslrootcert={stranger}"),
            format!("{by_name}?sslmode=verify-full"),
        ] {
            assert!(encrypted(&untrusted).await.is_err(), "{untrusted} must be refused");
        }

        // The store and its LISTEN connection both go through the same connector.
        let store = PgStore::connect(&full, 2).await.expect("store over verified TLS");
        store.check().await.expect("health check over TLS");
        PgSignalBus::connect(&full).await.expect("LISTEN over verified TLS");
        let refused = PgStore::connect(&format!("{by_name}?sslmode=verify-ca&sslrootcert={stranger}"), 2).await;
        assert!(matches!(refused, Err(domain::DomainError::Unavailable(_))), "{refused:?}");
    }
}
