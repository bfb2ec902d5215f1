//! Throwaway certificates for the HTTPS tests: a CA the test makes, and server
//! certificates it signs, valid or not, for the names a test asks for. Made with the
//! `openssl` crate (the TLS library crawlq itself is built with), so a test can ask for
//! what the `openssl` command cannot easily give: a certificate that expired yesterday.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509NameBuilder, X509NameRef, X509};

/// A CA made for one test; its certificate is written to `ca.pem` in a temp dir, the file
/// a test names in `fetch.ca_file`.
pub struct TestCa {
    certificate: X509,
    key: PKey<Private>,
    dir: tempfile::TempDir,
}

/// A server's certificate and key, for [`crate::common::server::TestServer::start_tls`].
#[derive(Clone)]
pub struct Identity {
    pub certificate: X509,
    pub key: PKey<Private>,
}

/// How long a certificate is valid, relative to now.
#[derive(Clone, Copy)]
pub enum Validity {
    /// From yesterday to tomorrow.
    Current,
    /// From three days ago to yesterday.
    Expired,
}

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("PKey")
}

fn time(offset_days: i64) -> Asn1Time {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    Asn1Time::from_unix(now + offset_days * 86_400).expect("a time")
}

fn serial() -> openssl::asn1::Asn1Integer {
    let mut serial = BigNum::new().expect("BigNum");
    serial
        .rand(64, MsbOption::MAYBE_ZERO, false)
        .expect("random serial");
    serial.to_asn1_integer().expect("serial")
}

/// A v3 certificate for `common_name` and `key`, with a random serial, issued by `issuer`
/// (None: itself); validity, extensions and signature are the caller's.
fn certificate(
    common_name: &str,
    key: &PKey<Private>,
    issuer: Option<&X509NameRef>,
) -> X509Builder {
    let mut subject = X509NameBuilder::new().expect("name");
    subject
        .append_entry_by_nid(Nid::COMMONNAME, common_name)
        .expect("CN");
    let subject = subject.build();
    let mut builder = X509::builder().expect("X509 builder");
    builder.set_version(2).expect("v3");
    builder.set_serial_number(&serial()).expect("serial");
    builder.set_subject_name(&subject).expect("subject");
    builder
        .set_issuer_name(issuer.unwrap_or(&subject))
        .expect("issuer");
    builder.set_pubkey(key).expect("key");
    builder
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = key();
        let mut builder = certificate(&format!("crawlq test CA {name}"), &key, None);
        builder.set_not_before(&time(-1)).expect("not before");
        builder.set_not_after(&time(2)).expect("not after");
        builder
            .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .expect("basic constraints");
        builder
            .append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .unwrap(),
            )
            .expect("key usage");
        builder.sign(&key, MessageDigest::sha256()).expect("sign");
        let certificate = builder.build();
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("ca.pem"),
            certificate.to_pem().expect("PEM"),
        )
        .expect("write ca.pem");
        TestCa {
            certificate,
            key,
            dir,
        }
    }

    /// The CA's certificate as a PEM file: what `fetch.ca_file` names.
    pub fn pem_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server certificate for `names` (host names, or IP addresses such as "127.0.0.1").
    pub fn issue(&self, names: &[&str], validity: Validity) -> Identity {
        let key = key();
        let mut builder = certificate(
            names.first().copied().unwrap_or("server"),
            &key,
            Some(self.certificate.subject_name()),
        );
        let (from, to) = match validity {
            Validity::Current => (time(-1), time(1)),
            Validity::Expired => (time(-3), time(-1)),
        };
        builder.set_not_before(&from).expect("not before");
        builder.set_not_after(&to).expect("not after");
        let mut alternative = SubjectAlternativeName::new();
        for name in names {
            if name.parse::<std::net::IpAddr>().is_ok() {
                alternative.ip(name);
            } else {
                alternative.dns(name);
            }
        }
        let alternative = alternative
            .build(&builder.x509v3_context(Some(&self.certificate), None))
            .expect("subjectAltName");
        builder.append_extension(alternative).expect("SAN");
        builder
            .sign(&self.key, MessageDigest::sha256())
            .expect("sign");
        Identity {
            certificate: builder.build(),
            key,
        }
    }
}

impl Identity {
    /// Writes `NAME.crt` and `NAME.key` (PEM) into `dir`, for a server run as a process.
    pub fn write_pem(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let certificate = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&certificate, self.certificate.to_pem().expect("PEM")).expect("write");
        std::fs::write(&key, self.key.private_key_to_pem_pkcs8().expect("key PEM")).expect("write");
        (certificate, key)
    }
}
