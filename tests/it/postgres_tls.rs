//! TLS to the PostgreSQL server, with the build's TLS stack: a throwaway server that takes
//! TCP connections only over TLS (pg_hba.conf rejects the others), with a certificate from
//! a throwaway CA the test makes (`common::tls`). Through the real binary:
//! `sslmode=require` crawls a page, `verify-full` with the right CA connects, and a wrong
//! CA or no TLS at all is refused with a message that says why.

use std::path::Path;

use crate::common::postgres::{self, PgServer};
use crate::common::server::{Reply, TestServer};
use crate::common::tls::{TestCa, Validity};
use crate::common::{self, KillOnDrop};
use crawlq::runtime::block_on;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server that takes TCP connections on `port` over TLS only, with the certificate in
/// `certificates`.
fn tls_only_server(port: u16, certificates: &Path) -> Result<PgServer, String> {
    PgServer::start_new_with(port, |data| {
        for file in ["server.crt", "server.key"] {
            std::fs::copy(certificates.join(file), data.join(file))
                .map_err(|e| format!("{file}: {e}"))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )
        .map_err(|e| e.to_string())?;
        Ok(vec![
            "listen_addresses=127.0.0.1".into(),
            "ssl=on".into(),
            "ssl_cert_file=server.crt".into(),
            "ssl_key_file=server.key".into(),
        ])
    })
}

/// `crawlq ARGS --database URL` in `dir`: (succeeded, stdout, stderr).
fn crawlq(dir: &Path, url: &str, args: &[&str]) -> (bool, String, String) {
    let out = common::crawlq(dir)
        .args(args)
        .arg("--database")
        .arg(url)
        .output()
        .expect("crawlq runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tls_to_the_server_is_used_verified_and_refused_with_reasons() {
    block_on(async {
        let work = tempfile::tempdir().unwrap();
        let certificates = work.path();
        let ca = TestCa::new("ca");
        let other = TestCa::new("other-ca");
        ca.issue(&["localhost", "127.0.0.1"], Validity::Current)
            .write_pem(certificates, "server");
        let port = free_port();
        let server = match tls_only_server(port, certificates) {
            Ok(server) => server,
            Err(why) => {
                postgres::cannot_run(&why);
                return;
            }
        };
        let admin = postgres::connect(&server.url("postgres")).await;
        sqlx::query("CREATE DATABASE tls")
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let over_tcp =
            |host: &str, options: &str| format!("postgres://postgres@{host}:{port}/tls?{options}");
        let (ca, other_ca) = (ca.pem_file(), other.pem_file());

        // sslmode=require: the daemon crawls a page; the server takes nothing else on TCP.
        let site = TestServer::start("127.0.0.1", |_| Reply::html("<title>over tls</title>"));
        let require = over_tcp("127.0.0.1", "sslmode=require");
        let (ok, _, stderr) = crawlq(work.path(), &require, &["add", &site.url("/page")]);
        assert!(ok, "{stderr}");
        let mut daemon = KillOnDrop(
            common::crawlq(work.path())
                .args(["run", "--exit-when-idle", "--database", &require])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let status =
            common::exit_within(&mut daemon.0, common::DEADLINE, "the daemon on TLS").await;
        let log = common::stderr_of(&mut daemon.0);
        assert!(status.success(), "{log}");
        let user = postgres::connect(&server.url("tls")).await;
        let (status, title): (String, Option<String>) = sqlx::query_as(
            "SELECT j.status, r.title FROM jobs j LEFT JOIN results r ON r.job_id = j.id",
        )
        .fetch_one(&user)
        .await
        .unwrap();
        assert_eq!(
            (status.as_str(), title.as_deref()),
            ("done", Some("over tls"))
        );
        user.close().await;

        // verify-full against the CA that signed the server's certificate.
        let verified = over_tcp(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
        );
        let (ok, stdout, stderr) = crawlq(work.path(), &verified, &["status"]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("done"), "{stdout}");

        // Another CA: refused, and the message says it is the certificate.
        let wrong_ca = over_tcp(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
        );
        let (ok, _, stderr) = crawlq(work.path(), &wrong_ca, &["status"]);
        assert!(!ok);
        assert!(
            stderr.contains("certificate verify failed") && stderr.contains("must name the CA"),
            "says what is wrong and what to check: {stderr}"
        );

        // No TLS: the server's rule refuses it, and the message names that rule.
        let plain = over_tcp("127.0.0.1", "sslmode=disable");
        let (ok, _, stderr) = crawlq(work.path(), &plain, &["status"]);
        assert!(!ok);
        assert!(stderr.contains("pg_hba.conf"), "{stderr}");
        assert!(stderr.contains("no encryption"), "{stderr}");
        drop(server);
    });
}
