//! Upstream TLS for servers with self-signed certificates: `upstream_pin` trusts exactly one
//! certificate or key (by SHA-256), and a wrong pin is refused with a reply and a log line that
//! name the pins the server did present, so the operator can check and copy them.

mod support;

use support::*;

async fn relay(cert: &TestCert, listener_extra: &str) -> (FakeUpstream, TokenEndpoint, Relay) {
    let upstream = FakeUpstream::start(
        UpstreamOptions {
            starttls: true,
            ..Default::default()
        },
        Some(cert),
    )
    .await;
    upstream.accept_token("access-1", "mailbox@example.com");
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let relay = Relay::start(&relay_toml(
        upstream.addr,
        "starttls",
        &tokens.url(),
        listener_extra,
        "",
    ))
    .await;
    (upstream, tokens, relay)
}

/// The two pins (key, certificate) a refusal names.
fn pins_in(text: &str) -> (String, String) {
    let pin_after = |marker: &str| {
        let at = text
            .find(marker)
            .unwrap_or_else(|| panic!("{marker} in {text}"))
            + marker.len();
        text[at..]
            .split([',', ')', ' ', '\n', '"', '\\'])
            .next()
            .unwrap()
            .to_owned()
    };
    (pin_after("its key is "), pin_after("the certificate "))
}

#[tokio::test]
async fn a_self_signed_upstream_is_trusted_by_its_pin_and_a_wrong_pin_is_refused() {
    let cert = TestCert::new();
    let wrong = format!("sha256/{}", b64(&[0u8; 32]));
    let (_u, _t, r) = relay(&cert, &format!("upstream_pin = \"{wrong}\"")).await;
    let reply = login_reply(&r).await;
    assert!(
        reply.starts_with("454 4.4.1 Upstream unreachable (TLS handshake failed: "),
        "{reply}"
    );
    assert!(reply.contains("matches no upstream_pin"), "{reply}");
    let log = captured_log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("matches no upstream_pin"))
        .expect("a log line naming the pins");
    let (key, whole) = pins_in(line);
    assert!(key.starts_with("sha256/") && whole.starts_with("sha256/") && key != whole);
    drop(r);

    // Either pin works: the key's (survives a renewal with the same key) or the certificate's,
    // also in the hex form openssl prints.
    let hex: String = {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(whole.trim_start_matches("sha256/"))
            .unwrap();
        raw.iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    for pin in [key.clone(), whole.clone(), hex] {
        let (_u, _t, r) = relay(&cert, &format!("upstream_pin = [\"{wrong}\", \"{pin}\"]")).await;
        let mut c = Client::connect(r.addr).await;
        assert_eq!(c.reply().await, "220 localhost ESMTP ready\r\n", "{pin}");
        c.ehlo().await;
        c.send(&format!(
            "AUTH PLAIN {}\r\n",
            plain("user@example.com", PASSWORD)
        ))
        .await;
        assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
    }
    // The same certificate as upstream_ca, with a name it does not carry: refused as before.
    let (_u, _t, r) = relay(
        &cert,
        &format!(
            "upstream_ca = \"{}\"\nupstream_name = \"mail.example.com\"",
            cert.cert.display()
        ),
    )
    .await;
    assert!(login_reply(&r)
        .await
        .starts_with("454 4.4.1 Upstream unreachable (TLS handshake failed"));
}

/// The reply to a login with the right local password: the upstream is dialled only then.
async fn login_reply(r: &Relay) -> String {
    let mut c = Client::connect(r.addr).await;
    assert_eq!(c.reply().await, "220 localhost ESMTP ready\r\n");
    c.ehlo().await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    c.reply().await
}

#[test]
fn pins_are_checked_when_the_configuration_is_read() {
    for (pin, problem) in [
        ("sha256/not base64!", "not base64"),
        ("sha256/AAAA", "32 bytes"),
        ("AB:CD", "64 hex digits"),
    ] {
        let toml = relay_toml(
            "127.0.0.1:1".parse().unwrap(),
            "starttls",
            "http://127.0.0.1:1/token",
            &format!("upstream_pin = \"{pin}\""),
            "",
        );
        let problems = authrelay::config::from_toml_str(&toml).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.path == "listener.smtp.upstream_pin" && p.message.contains(problem)),
            "{pin}: {problems:?}"
        );
    }
}
