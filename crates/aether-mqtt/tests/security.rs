//! TLS and passwords, on private `mosquitto` processes: `mqtts://` with a CA file and a
//! client certificate (certificates made with `openssl` for the test), and user names with
//! passwords that never show up in errors or `Debug`.

mod common;

use std::time::Duration;

use aether_core::{Action, Bytes, Topic, TopicFilter, Transport};
use aether_mqtt::MqttTransport;
use common::{Mosquitto, TempDir, openssl, union};

/// A CA, a server certificate for `localhost` and 127.0.0.1, one for another name, and a
/// client certificate.
fn certificates(dir: &TempDir) {
    let d = &dir.0;
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=aether test CA",
        ],
    );
    std::fs::write(
        dir.path("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(
        dir.path("other.ext"),
        "subjectAltName=DNS:elsewhere.example\n",
    )
    .unwrap();
    for (name, subject, ext) in [
        ("server", "/CN=localhost", Some("server.ext")),
        ("other", "/CN=elsewhere.example", Some("other.ext")),
        ("client", "/CN=aether-client", None),
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        openssl(
            d,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
                subject,
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
        ];
        if let Some(ext) = ext {
            args.extend(["-extfile", ext]);
        }
        openssl(d, &args);
    }
    // Mosquitto started as root reads its files as the `mosquitto` user.
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "other.pem",
        "other.key",
    ] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

async fn round_trip(t: &MqttTransport) {
    let topic = Topic::new(&union(), "j", "t", "x", "1", Action::Status).unwrap();
    let mut sub = t.subscribe(&TopicFilter::exact(&topic)).await.unwrap();
    t.publish(&topic, Bytes::from_static(b"over tls"))
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the message")
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"over tls");
}

#[tokio::test]
async fn tls_with_a_ca_file_and_a_client_certificate() {
    let dir = TempDir::new();
    certificates(&dir);
    let p = |f: &str| dir.path(f).display().to_string();
    let broker = Mosquitto::start(&format!(
        "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
        p("ca.pem"),
        p("server.pem"),
        p("server.key")
    ));
    let base = format!("mqtts://127.0.0.1:{}?tls_ca={}", broker.port, p("ca.pem"));
    let with_cert = format!(
        "{base}&tls_cert={}&tls_key={}",
        p("client.pem"),
        p("client.key")
    );
    let t = MqttTransport::connect(&with_cert)
        .await
        .expect("TLS with a client certificate");
    round_trip(&t).await;
    t.close().await.unwrap();

    // The broker requires a client certificate.
    let err = MqttTransport::connect(&base).await.unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    // The broker's certificate must come from a CA this client trusts.
    let untrusted = format!(
        "mqtts://127.0.0.1:{}?tls_cert={}&tls_key={}&connect_timeout=2s",
        broker.port,
        p("client.pem"),
        p("client.key")
    );
    assert!(MqttTransport::connect(&untrusted).await.is_err());
    // A missing file is a configuration error that says which.
    let err = MqttTransport::connect(&format!(
        "mqtts://127.0.0.1:{}?tls_ca=/nonexistent.pem",
        broker.port
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("tls_ca"), "{err}");

    // The broker's certificate must name the host connected to, unless told otherwise.
    let other = Mosquitto::start(&format!(
        "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n",
        p("ca.pem"),
        p("other.pem"),
        p("other.key")
    ));
    let url = format!(
        "mqtts://127.0.0.1:{}?tls_ca={}&connect_timeout=2s",
        other.port,
        p("ca.pem")
    );
    assert!(
        MqttTransport::connect(&url).await.is_err(),
        "a certificate for another name"
    );
    let t = MqttTransport::connect(&format!("{url}&tls_verify_hostname=false"))
        .await
        .expect("tls_verify_hostname=false accepts it");
    round_trip(&t).await;
    t.close().await.unwrap();
}

#[tokio::test]
async fn user_name_and_password_never_printed() {
    let dir = TempDir::new();
    let passwords = dir.path("passwords");
    let out = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["alice", "s3cr3t-pw"])
        .output()
        .expect("run mosquitto_passwd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let broker = Mosquitto::start(&format!(
        "allow_anonymous false\npassword_file {}\n",
        passwords.display()
    ));

    let t = MqttTransport::connect(&format!("mqtt://alice:s3cr3t-pw@127.0.0.1:{}", broker.port))
        .await
        .expect("the right password");
    round_trip(&t).await;
    assert!(!format!("{t:?}").contains("s3cr3t-pw"), "{t:?}");
    t.close().await.unwrap();

    for url in [
        format!("mqtt://alice:wrong-pw@127.0.0.1:{}", broker.port),
        format!(
            "mqtt://alice:wrong-pw@127.0.0.1:{}?version=3.1.1",
            broker.port
        ),
        format!("mqtt://127.0.0.1:{}", broker.port),
    ] {
        let err = MqttTransport::connect(&url).await.unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("cannot connect"), "{text}");
        assert!(!text.contains("wrong-pw"), "{text}");
    }
}
