//! The admin server attacked again (issue 26): every form that changes something (Retry and
//! Delete of a spooled message, the app registration, a sign-in) is refused when it comes from
//! another site, for another host name, without the page's CSRF token or without the account's
//! password, and nothing changes; a subject, sender or upstream reply written by a device or a
//! server never reaches the page as markup; oversized headers are refused.
//!
//! Found: a form posted from another site (a foreign `Origin`, `Sec-Fetch-Site: cross-site`)
//! was not refused by itself; the CSRF token and the password stopped it. Now the server
//! refuses it first (403), as OWASP's CSRF guidance asks of a second line of defence.

mod support;

use support::spool::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request to the admin server with `headers` (each ending in CRLF) and a form
/// body; the whole response.
async fn request(admin: std::net::SocketAddr, path: &str, headers: &str, form: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\n{headers}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn every_change_needs_this_site_the_token_and_the_password_and_nothing_is_markup() {
    let s = admin_world().await;
    let admin = s.admin;
    let own = format!("Host: localhost:{}\r\n", admin.port());
    // A message the upstream refuses for good; its reply carries markup (`<nobody>`).
    let mut c = logged_in(s.w.relay.addr).await;
    c.send("MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<nobody@example.com>\r\nDATA\r\n")
        .await;
    for _ in 0..3 {
        c.reply().await;
    }
    c.send(
        "From: <mailbox@example.com>\r\nSubject: <script>alert(1)</script>\r\n\r\nbody\r\n.\r\n",
    )
    .await;
    let reply = c.reply().await;
    let id = reply.trim_end().rsplit(' ').next().unwrap().to_owned();
    let failed = || s.spool.join("failed").join(&id).exists();
    wait_for("the message to fail", failed).await;

    let page = http_get(admin, "/account/user").await;
    assert!(page.contains(&format!("<td>{id}</td>")), "{page}");
    assert!(
        page.contains("550 5.1.1 &lt;nobody&gt; User unknown"),
        "{page}"
    );
    assert!(
        !page.contains("<nobody>") && !page.contains("<script"),
        "{page}"
    );
    let csrf = csrf_of(&page);
    let password = PASSWORD.replace(' ', "+");
    let forms = [
        (
            "/account/user/spool",
            format!("csrf={csrf}&password={password}&retry={id}"),
        ),
        (
            "/account/user/spool",
            format!("csrf={csrf}&password={password}&delete={id}"),
        ),
        (
            "/account/user/app",
            format!("csrf={csrf}&password={password}&client_id=attacker-app"),
        ),
        (
            "/account/user/authorize",
            format!("csrf={csrf}&password={password}"),
        ),
    ];
    let foreign = [
        ("Origin: http://attacker.example\r\n", "403"),
        ("Origin: null\r\n", "403"),
        (
            &format!("Origin: http://localhost:{}0\r\n", admin.port()),
            "403",
        ),
        ("Sec-Fetch-Site: cross-site\r\n", "403"),
        ("Sec-Fetch-Site: same-site\r\n", "403"),
    ];
    for (path, form) in &forms {
        for (header, status) in foreign {
            let r = request(admin, path, &format!("{own}{header}"), form).await;
            assert!(
                r.starts_with(&format!("HTTP/1.1 {status}")),
                "{path} {header}: {r}"
            );
            assert!(r.contains("sent from another site"), "{path} {header}: {r}");
        }
        // Another host name (DNS rebinding), even from a matching origin.
        let r = request(
            admin,
            path,
            "Host: attacker.example\r\nOrigin: http://attacker.example\r\n",
            form,
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 421"), "{path}: {r}");
        // This site, but without the token or the password.
        let same = format!(
            "{own}Origin: http://localhost:{}\r\nSec-Fetch-Site: same-origin\r\n",
            admin.port()
        );
        let r = request(admin, path, &same, &form.replace(&csrf, "forged")).await;
        assert!(
            r.starts_with("HTTP/1.1 403") && r.contains("The form expired"),
            "{path}: {r}"
        );
        let r = request(admin, path, &same, &form.replace(&password, "")).await;
        assert!(
            r.starts_with("HTTP/1.1 403") && r.contains("local password"),
            "{path}: {r}"
        );
        // A megabyte of header.
        let big = format!("{own}X-Padding: {}\r\n", "a".repeat(1 << 20));
        let r = request(admin, path, &big, form).await;
        assert!(
            r.starts_with("HTTP/1.1 431"),
            "{path}: {}",
            &r[..r.len().min(200)]
        );
    }
    assert!(failed(), "nothing was retried or deleted");
    let stored = s.w.relay.running.shared.tokens.store().entry("user");
    assert!(
        stored.is_none_or(|e| e.client_id.as_deref() != Some("attacker-app")),
        "the app registration did not change"
    );

    // From this site, with the token and the password: done.
    let same = format!(
        "{own}Origin: http://localhost:{}\r\nSec-Fetch-Site: same-origin\r\n",
        admin.port()
    );
    let r = request(admin, forms[1].0, &same, &forms[1].1).await;
    assert!(r.starts_with("HTTP/1.1 303"), "{r}");
    assert!(!failed());
}
