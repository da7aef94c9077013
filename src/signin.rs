//! `authrelay login ACCOUNT`: authorize an account from a terminal (part of the binary, see
//! main.rs). Device code, paste-the-redirect-URL, or a client-credentials check; the result is
//! sealed into the token store, where a running relay finds it at the next login.

use authrelay::auth::authorize;
use authrelay::auth::oauth::{self, DevicePrompt, Grant, TokenError};
use authrelay::config::{self, AccountConfig, Config, Flow};
use authrelay::secret::Secret;
use authrelay::store::{Key, Store};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

pub fn run(path: &Path, account: &str, device: bool, paste: bool) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            return ExitCode::FAILURE;
        }
    };
    let Some(account) = cfg.accounts.iter().find(|a| a.id == account) else {
        let names: Vec<_> = cfg.accounts.iter().map(|a| a.id.as_str()).collect();
        return fail(format!(
            "no account {account:?} in {} (accounts: {})",
            path.display(),
            names.join(", ")
        ));
    };
    let oauth = match authorize::oauth_of(account) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let store = match cfg.store.open() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async {
        let key = match unlock(&store, account).await {
            Ok(k) => k,
            Err(code) => return code,
        };
        let ep = match authorize::endpoints(&store, account, Some(&key)) {
            Ok(ep) => ep,
            Err(e) => return fail(e.description),
        };
        let http = oauth::http_client(cfg.security.token_timeout);
        let result = match (oauth.flow, device, paste) {
            (Flow::ClientCredentials, _, _) => client_credentials(&http, &ep, oauth).await,
            (_, _, true) => paste_flow(&cfg, &http, &ep, account).await,
            (_, true, _) => device_flow(&http, &ep, &account.mailbox).await,
            (_, false, false) if ep.device_url.is_some() => {
                device_flow(&http, &ep, &account.mailbox).await
            }
            _ => paste_flow(&cfg, &http, &ep, account).await,
        };
        let grant = match result {
            Ok(g) => g,
            Err(e) => {
                let _ =
                    store.record_error(&account.id, &format!("{}: {}", e.code(), e.description));
                return fail(format!("{} ({})", e.description, e.code()));
            }
        };
        keep(&store, account, oauth.flow, &key, &grant)
    })
}

/// Stores a sign-in's tokens and says what happened, with a warning for a sign-in without a
/// refresh token or as someone other than the mailbox.
fn keep(store: &Store, account: &AccountConfig, flow: Flow, key: &Key, grant: &Grant) -> ExitCode {
    if flow == Flow::Delegated && grant.refresh_token.is_none() {
        eprintln!("warning: the identity provider returned no refresh token (is offline_access among the scopes?); the relay can use this access token only until it expires");
    }
    if let Some(said) = authorize::wrong_user(account, grant) {
        eprintln!("warning: account {}: {said}.", account.id);
    }
    match authorize::save_grant(store, &account.id, key, grant) {
        Ok(_) => {
            println!(
                "account {}: authorized; tokens stored in {} (access token valid for {} min). A running relay uses them at the next login.",
                account.id,
                store.path().display(),
                grant.expires_in.as_secs() / 60
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("the tokens could not be stored: {e}")),
    }
}

/// The account's store key: the key file's, or one derived from the local password, which is
/// checked against the account's password hash first (a wrong one changes nothing).
async fn unlock(store: &Store, account: &AccountConfig) -> Result<Key, ExitCode> {
    if let Some(k) = store.known_key(&account.id) {
        return Ok(k);
    }
    let Some(hash) = &account.password_hash else {
        return Err(fail(
            "the account has no local password to seal its tokens with; set [store] key_file",
        ));
    };
    let password = read_password(&format!(
        "Local password of account {} (it seals the tokens): ",
        account.id
    ))
    .map_err(fail)?;
    let (pw, phc) = (password.clone(), hash.clone());
    let ok =
        tokio::task::spawn_blocking(move || authrelay::credential::password::verify(&pw, &phc))
            .await
            .unwrap_or(false);
    if !ok {
        return Err(fail(
            "wrong local password for this account; nothing was changed",
        ));
    }
    store
        .unlock(&account.id, Some(&password))
        .await
        .ok_or_else(|| fail("the store key could not be derived"))
}

fn read_password(prompt: &str) -> Result<Secret, String> {
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt)
            .map(Secret::new)
            .map_err(|e| format!("cannot read the password: {e}"));
    }
    read_line().map_err(|e| format!("cannot read the password from standard input: {e}"))
}

fn read_line() -> std::io::Result<Secret> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let value = Secret::new(line.trim_end_matches(['\r', '\n']));
    zeroize::Zeroize::zeroize(&mut line);
    Ok(value)
}

async fn device_flow(
    http: &reqwest::Client,
    ep: &config::Endpoints,
    mailbox: &str,
) -> Result<Grant, TokenError> {
    oauth::device_flow(http, ep, |p: &DevicePrompt| {
        println!(
            "Sign in as {mailbox}: the tokens are for that mailbox, and a sign-in as another user will not work.\nTo sign in, open {} in any browser and enter the code {}\n(the code expires in {} min; waiting for the sign-in...)",
            p.verification_uri,
            p.user_code,
            p.expires_in.as_secs() / 60
        );
        let _ = std::io::stdout().flush();
    })
    .await
}

async fn paste_flow(
    cfg: &Config,
    http: &reqwest::Client,
    ep: &config::Endpoints,
    account: &AccountConfig,
) -> Result<Grant, TokenError> {
    let redirect_uri = cfg.admin.redirect_uri();
    let request = oauth::authorization_request(ep, &redirect_uri, Some(&account.mailbox))?;
    println!(
        "1. Open this URL in a browser and sign in as {}:\n\n{}\n\n2. The browser then goes to {redirect_uri}?code=... (the page may fail to load: that is fine).\n3. Copy that whole address from the address bar and paste it here, then press Enter:",
        account.mailbox, request.url
    );
    let _ = std::io::stdout().flush();
    let pasted = read_line().map_err(|e| {
        TokenError::new(
            oauth::ErrorClass::Configuration,
            "input",
            format!("cannot read the address: {e}"),
        )
    })?;
    let (code, state) = parse_redirect(pasted.expose())?;
    if state.expose() != request.state.expose() {
        return Err(TokenError::new(
            oauth::ErrorClass::Reauthorize,
            "state_mismatch",
            "the pasted address belongs to another sign-in (its state does not match); start again",
        ));
    }
    oauth::exchange_code(http, ep, &redirect_uri, &code, &request.verifier).await
}

/// Takes `code` and `state` from a pasted redirect address (or reports the provider's error).
fn parse_redirect(pasted: &str) -> Result<(Secret, Secret), TokenError> {
    let bad = |what: &str| {
        TokenError::new(
            oauth::ErrorClass::Reauthorize,
            "bad_redirect",
            what.to_owned(),
        )
    };
    let url = reqwest::Url::parse(pasted.trim()).map_err(|_| {
        bad("that is not an address; paste the whole address the browser shows after signing in")
    })?;
    let mut code = None;
    let mut state = None;
    let mut error = None;
    let mut description = String::new();
    for (k, v) in url.query_pairs() {
        match &*k {
            "code" => code = Some(Secret::new(v.into_owned())),
            "state" => state = Some(Secret::new(v.into_owned())),
            "error" => error = Some(v.into_owned()),
            "error_description" => description = v.into_owned(),
            _ => {}
        }
    }
    if let Some(e) = error {
        return Err(oauth::classify_server_error(&e, &description));
    }
    match (code, state) {
        (Some(c), Some(s)) => Ok((c, s)),
        _ => Err(bad("the address has no code and state; paste the address the browser lands on after signing in")),
    }
}

async fn client_credentials(
    http: &reqwest::Client,
    ep: &config::Endpoints,
    oauth: &config::OAuthConfig,
) -> Result<Grant, TokenError> {
    let signer = match &oauth.certificate {
        Some(c) => Some(
            authrelay::credential::assertion::CertificateSigner::load(&c.cert, &c.key)
                .map_err(|e| TokenError::new(oauth::ErrorClass::Configuration, "certificate", e))?,
        ),
        None => None,
    };
    let grant = oauth::client_credentials(http, ep, signer.as_ref()).await?;
    println!("app-only token obtained: the app registration, its secret or certificate, and the tenant work.");
    Ok(grant)
}
