//! A fake OAuth 2.0 token endpoint (RFC 6749 §5): issues and rotates tokens, or fails as told.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
pub enum TokenBehaviour {
    /// Issue `access-N` tokens and rotate refresh tokens `rt-N`.
    Issue,
    /// Answer with an OAuth error (HTTP 400).
    Error {
        error: &'static str,
        description: &'static str,
    },
    /// HTTP 500 with an HTML body.
    ServerError,
    /// Never answer within the relay's timeout.
    Hang,
    /// HTTP 200 with a body that is not JSON.
    Garbage,
    /// This status and JSON body, whatever was asked (hostile or broken endpoints).
    Raw { status: u16, body: String },
}

pub struct TokenEndpoint {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    pub behaviour: Arc<Mutex<TokenBehaviour>>,
    /// Refresh tokens the endpoint accepts.
    pub valid_refresh: Arc<Mutex<Vec<String>>>,
    /// Request bodies received, in order.
    pub bodies: Arc<Mutex<Vec<String>>>,
    /// Access tokens issued, in order.
    pub issued: Arc<Mutex<Vec<String>>>,
    pub expires_in: Arc<AtomicU64>,
}

impl TokenEndpoint {
    pub async fn start(initial_refresh: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ep = TokenEndpoint {
            addr: listener.local_addr().unwrap(),
            requests: Arc::default(),
            behaviour: Arc::new(Mutex::new(TokenBehaviour::Issue)),
            valid_refresh: Arc::new(Mutex::new(vec![initial_refresh.to_owned()])),
            bodies: Arc::default(),
            issued: Arc::default(),
            expires_in: Arc::new(AtomicU64::new(3600)),
        };
        let (requests, behaviour, valid, bodies, issued, expires_in) = (
            ep.requests.clone(),
            ep.behaviour.clone(),
            ep.valid_refresh.clone(),
            ep.bodies.clone(),
            ep.issued.clone(),
            ep.expires_in.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (requests, behaviour, valid, bodies, issued, expires_in) = (
                    requests.clone(),
                    behaviour.clone(),
                    valid.clone(),
                    bodies.clone(),
                    issued.clone(),
                    expires_in.clone(),
                );
                tokio::spawn(async move {
                    let mut reader = BufReader::new(tcp);
                    loop {
                        let mut len = 0usize;
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if h == "\r\n" {
                                break;
                            }
                            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; len];
                        reader.read_exact(&mut body).await.unwrap();
                        let body = String::from_utf8(body).unwrap();
                        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
                        bodies.lock().unwrap().push(body.clone());
                        let form: HashMap<String, String> = url_form(&body);
                        let b = behaviour.lock().unwrap().clone();
                        let (status, json) = match b {
                            TokenBehaviour::Hang => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                            TokenBehaviour::ServerError => (500, "<html>oops</html>".to_string()),
                            TokenBehaviour::Garbage => (200, "{not json".to_string()),
                            TokenBehaviour::Raw { status, body } => (status, body),
                            TokenBehaviour::Error { error, description } => (
                                400,
                                serde_json::json!({"error": error, "error_description": description}).to_string(),
                            ),
                            TokenBehaviour::Issue => {
                                let rt = form.get("refresh_token").cloned().unwrap_or_default();
                                let ok = valid.lock().unwrap().contains(&rt);
                                if !ok {
                                    (400, serde_json::json!({"error": "invalid_grant", "error_description": "AADSTS70000: The provided grant is invalid."}).to_string())
                                } else {
                                    let at = format!("access-{n}");
                                    let new_rt = format!("rt-{n}");
                                    *valid.lock().unwrap() = vec![new_rt.clone()];
                                    issued.lock().unwrap().push(at.clone());
                                    (200, serde_json::json!({"token_type": "Bearer", "access_token": at, "refresh_token": new_rt, "expires_in": expires_in.load(Ordering::SeqCst), "scope": "x"}).to_string())
                                }
                            }
                        };
                        let reason = if status == 200 { "OK" } else { "Error" };
                        let resp = format!(
                            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                            json.len()
                        );
                        if reader.get_mut().write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        ep
    }

    pub fn url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn set(&self, b: TokenBehaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

fn url_form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode_pct(k), decode_pct(v)))
        .collect()
}

fn decode_pct(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
