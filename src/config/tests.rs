use super::*;

fn parse(toml: &str) -> Result<Config, Vec<Problem>> {
    let value = config::Config::builder()
        .add_source(File::from_str(toml, FileFormat::Toml))
        .build()
        .unwrap()
        .try_deserialize::<Value>()
        .unwrap();
    from_value(value)
}

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpQ";

fn minimal() -> String {
    format!(
        r#"
[listener.smtp]
protocol = "smtp"
listen = "127.0.0.1:2525"
upstream = "smtp.office365.com:587"
upstream_tls = "starttls"

[account.scanner]
login = "scanner@contoso.com"
password_hash = "{HASH}"
provider = "microsoft"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
refresh_token = "rt"
"#
    )
}

#[test]
fn minimal_config_has_sensible_defaults() {
    let c = parse(&minimal()).unwrap();
    let l = &c.listeners[0];
    assert_eq!(
        (l.name.as_str(), l.tls, l.upstream.port),
        ("smtp", LocalTls::None, 587)
    );
    assert_eq!(l.upstream.name, "smtp.office365.com");
    let a = &c.accounts[0];
    assert_eq!(a.mailbox, "scanner@contoso.com");
    let AccountAuth::OAuth(o) = &a.auth else {
        panic!("oauth expected")
    };
    let ep = o.endpoints(&Default::default()).unwrap();
    assert_eq!(
        ep.token_url,
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(
        ep.authorize_url,
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize"
    );
    assert_eq!(
        ep.device_url.as_deref(),
        Some("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode")
    );
    assert_eq!(
        c.admin.redirect_uri(),
        "http://localhost:9090/register_microsoft_graph_api/"
    );
    assert_eq!(c.store.path, std::path::PathBuf::from("state/tokens.json"));
    assert_eq!(o.scopes.len(), 4);
    assert!(format!("{c:?}").contains("[REDACTED]"));
    assert!(!format!("{c:?}").contains("argon2id"));
}

#[test]
fn reports_every_problem_with_its_path() {
    let toml = minimal()
        .replace(
            "upstream_tls = \"starttls\"",
            "upstream_tls = \"startls\"\ncolour = \"blue\"",
        )
        .replace(
            "tenant = \"contoso.onmicrosoft.com\"",
            "tenant = \"contoso onmicrosoft\"",
        );
    let problems = parse(&toml).unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(paths.contains(&"listener.smtp.upstream_tls"));
    assert!(paths.contains(&"listener.smtp.colour"));
    assert!(paths.contains(&"account.scanner.tenant"));
}

#[test]
fn refuses_remote_bind_and_plaintext_remote_upstream() {
    let toml = minimal()
        .replace("127.0.0.1:2525", "0.0.0.0:2525")
        .replace("upstream_tls = \"starttls\"", "upstream_tls = \"none\"");
    let problems = parse(&toml).unwrap_err();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.starts_with("listener.smtp.listen: 0.0.0.0:2525 is not a loopback")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("listener.smtp.upstream_tls:")),
        "{text:?}"
    );
}

#[test]
fn secrets_from_files_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("secret");
    std::fs::write(&f, "s3cret\n").unwrap();
    let toml = minimal().replace(
        "refresh_token = \"rt\"",
        &format!(
            "refresh_token = \"rt\"\nclient_secret_file = \"{}\"",
            f.display()
        ),
    );
    let c = parse(&toml).unwrap();
    let AccountAuth::OAuth(o) = &c.accounts[0].auth else {
        panic!()
    };
    assert_eq!(o.client_secret.as_ref().unwrap().expose(), "s3cret");

    let both = toml.replace(
        "client_secret_file",
        "client_secret = \"x\"\nclient_secret_file",
    );
    let problems = parse(&both).unwrap_err();
    assert_eq!(problems[0].path, "account.scanner.client_secret");
}

#[test]
fn duplicate_logins_and_bad_hash() {
    let toml = format!(
        "{}\n[account.other]\nlogin = \"SCANNER@contoso.com\"\npassword_hash = \"plain\"\nauth = \"passthrough\"\n",
        minimal()
    );
    let problems = parse(&toml).unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"account.scanner.login"), "{paths:?}");
    assert!(paths.contains(&"account.other.password_hash"), "{paths:?}");
}

#[test]
fn host_port_parsing() {
    assert_eq!(
        split_host_port("smtp.office365.com:587"),
        Some(("smtp.office365.com".into(), 587))
    );
    assert_eq!(split_host_port("[::1]:25"), Some(("::1".into(), 25)));
    assert_eq!(split_host_port("host"), None);
    assert_eq!(split_host_port("host:0"), None);
    assert!(
        is_loopback_host("127.0.0.2") && is_loopback_host("::1") && is_loopback_host("LOCALHOST")
    );
    assert!(!is_loopback_host("10.0.0.1"));
}

#[test]
fn a_syntax_error_does_not_quote_the_line() {
    let toml = minimal().replace(
        "refresh_token = \"rt\"",
        "refresh_token = \"rt-secret-canary-9x",
    );
    let problems = from_toml_str(&toml).unwrap_err();
    let text = format!("{problems:?}");
    assert!(!text.contains("canary"), "{text}");
    assert!(text.contains("TOML parse error at line"), "{text}");
}

#[test]
fn an_account_may_name_its_own_upstream_per_protocol() {
    let toml = format!(
        "{}upstream.smtp = \"smtp.gmail.com:587\"\nupstream.imap = {{ address = \"mail.corp.example:993\", pin = \"sha256/{}\" }}\nupstream.pop3 = {{ address = \"127.0.0.1:1110\", tls = \"none\" }}\n",
        minimal(),
        "A".repeat(43) + "="
    );
    let c = parse(&toml).unwrap();
    let u = &c.accounts[0].upstreams;
    let smtp = u.smtp.as_ref().unwrap();
    assert_eq!(
        (smtp.host.as_str(), smtp.port, smtp.tls),
        ("smtp.gmail.com", 587, UpstreamTls::Starttls)
    );
    assert_eq!(smtp.name, "smtp.gmail.com");
    let imap = u.imap.as_ref().unwrap();
    // The well-known port says implicit TLS; the pin is the whole trust.
    assert_eq!((imap.tls, imap.pin.len()), (UpstreamTls::Implicit, 1));
    assert_eq!(u.pop3.as_ref().unwrap().tls, UpstreamTls::None);
    // The listener's upstream for protocols the account does not name.
    let listener = &c.listeners[0].upstream;
    assert_eq!(c.accounts[0].upstream(Protocol::Smtp, listener), smtp);
}

#[test]
fn a_bad_account_upstream_is_named_with_its_path() {
    let cases = [
        (
            "upstream.smtp = \"mail.example:2587\"",
            "account.scanner.upstream.smtp.tls",
            "missing",
        ),
        (
            "upstream.imap = { address = \"mail.example:143\", tls = \"none\" }",
            "account.scanner.upstream.imap.tls",
            "only for a loopback",
        ),
        (
            "upstream.nntp = \"news.example:119\"",
            "account.scanner.upstream.nntp",
            "unknown protocol",
        ),
        (
            "upstream.smtp = \"no-port\"",
            "account.scanner.upstream.smtp.address",
            "not host:port",
        ),
        (
            "upstream.smtp = { address = \"a.example:587\", colour = \"red\" }",
            "account.scanner.upstream.smtp.colour",
            "unknown key",
        ),
    ];
    for (line, path, message) in cases {
        let problems = parse(&format!("{}{line}\n", minimal())).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.path == path && p.message.contains(message)),
            "{line}: {problems:?}"
        );
    }
}

#[test]
fn smtp_listeners_spool_by_default_and_graph_sending_has_microsofts_defaults() {
    let c = parse(&minimal()).unwrap();
    assert!(c.listeners[0].spool, "SMTP spools unless told otherwise");
    assert_eq!(c.accounts[0].send, Sending::Smtp);
    assert_eq!(c.accounts[0].concurrency, 3);
    let tilde = minimal().replace(
        "upstream_tls = \"starttls\"\n",
        "upstream_tls = \"starttls\"\ntilde_login = true\n",
    );
    assert!(!parse(&tilde).unwrap().listeners[0].spool);

    let graph = format!("{}send = \"graph\"\n", minimal());
    let a = &parse(&graph).unwrap().accounts[0];
    let Sending::Graph(g) = &a.send else {
        panic!("graph expected")
    };
    assert_eq!(g.url, GRAPH_URL);
    assert_eq!(
        g.scopes,
        ["https://graph.microsoft.com/Mail.Send", "offline_access"]
    );
    assert_eq!(g.max_request_bytes, 4 << 20);
    assert_eq!(a.concurrency, 4, "Graph's limit: 4 requests per mailbox");

    let problems = |extra: &str| {
        parse(&format!("{}{extra}", minimal()))
            .err()
            .unwrap_or_default()
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        problems("send = \"graph\"\ngraph_url = \"http://graph.example.com\"\n")
            .contains("graph_url")
    );
    assert!(problems("graph_url = \"https://graph.microsoft.us\"\n")
        .contains("only for send = \"graph\""));
    assert!(problems("send = \"fax\"\n").contains("expected smtp or graph"));
    let app_password = minimal()
        .replace(
            "provider = \"microsoft\"",
            "auth = \"app_password\"\napp_password = \"x\"",
        )
        .replace("tenant = \"contoso.onmicrosoft.com\"\n", "")
        .replace("client_id = \"11111111-2222-3333-4444-555555555555\"\n", "")
        .replace("refresh_token = \"rt\"\n", "");
    let err = parse(&format!("{app_password}send = \"graph\"\n"))
        .err()
        .unwrap();
    assert!(
        err.iter()
            .any(|p| p.to_string().contains("Graph takes OAuth tokens only")),
        "{err:?}"
    );
}

#[test]
fn a_toml_syntax_error_keeps_its_reason_and_position_but_not_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[store]\npath = \"state/x\nkey = \"secret-canary\"\n",
    )
    .unwrap();
    let problems = super::load(&path).unwrap_err();
    let text = problems[0].to_string();
    assert!(text.contains("line 2, column"), "{text}");
    assert!(!text.contains("secret-canary"), "{text}");
    assert!(
        text.contains("line 2, column 16: invalid basic string"),
        "{text}"
    );
}

#[test]
fn alerts_are_checked_against_the_rest_of_the_configuration() {
    let c = parse(&minimal()).unwrap();
    assert!(!c.alerts.sends(), "no [alerts]: the log only");
    let spooling = minimal().replace(
        "upstream_tls = \"starttls\"\n",
        "upstream_tls = \"starttls\"\nspool = true\n",
    );
    let ok = format!(
        "{spooling}client_secret_expires = \"2027-03-01\"\n\n[alerts]\nwebhook_url = \"https://hooks.example.com/T0/B0/x\"\nemail_to = \"it-admin@contoso.com\"\nemail_account = \"scanner\"\nspool_stuck_minutes = 5\n"
    );
    let c = parse(&ok).unwrap();
    assert_eq!(c.alerts.spool_stuck, Duration::from_secs(300));
    assert!(
        !format!("{:?}", c.alerts).contains("T0/B0"),
        "the webhook URL is a secret"
    );
    let AccountAuth::OAuth(o) = &c.accounts[0].auth else {
        panic!()
    };
    assert_eq!(
        o.client_secret_expires
            .map(crate::civil::rfc3339)
            .as_deref(),
        Some("2027-03-01T00:00:00Z")
    );
    let bad = |toml: String| -> String {
        let problems = parse(&toml).unwrap_err();
        problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let text = bad(format!(
        "{}\n[alerts]\nwebhook_url = \"http://hooks.example.com/x\"\nemail_to = \"Admin <a@b.c>\"\nemail_account = \"nobody\"\n",
        minimal().replace(
            "upstream_tls = \"starttls\"\n",
            "upstream_tls = \"starttls\"\nspool = false\n"
        )
    ));
    for words in [
        "alerts.webhook_url: must be an https:// URL",
        "alerts.email_to: \"Admin <a@b.c>\" is not a plain address",
        "alerts.email_account: no [account.nobody] (accounts: scanner)",
        "alerts.email_to: alert mails are queued in the spool",
    ] {
        assert!(text.contains(words), "{words} in:\n{text}");
    }
    let text = bad(format!(
        "{}client_secret_expires = \"2027-02-30\"\n",
        minimal()
    ));
    assert!(
        text.contains("is not a date in the form YYYY-MM-DD"),
        "{text}"
    );
}
