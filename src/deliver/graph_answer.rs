//! Reading Graph's answers: a status with its `Retry-After` and error, or the body of a
//! success, each read as it streams and bounded, so that a broken or hostile endpoint (a
//! wrong `graph_url`) can neither fill the memory nor pause an account for years.

use super::graph::Answer;
use crate::codec::line::sanitize_for_reply;

/// The longest `Retry-After` obeyed: Graph asks for seconds to minutes; a larger figure (a
/// broken or hostile endpoint) must not pause an account for years, or overflow a clock.
const MAX_RETRY_AFTER_SECS: u64 = 3600;
/// The most read of a successful answer (a draft's JSON echoes the message: up to Graph's
/// 4 MB request, and more for an upload's draft) and of an error's body.
pub(super) const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// The body of a 2xx answer, or the [`Answer`] otherwise.
pub(super) async fn success(
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<Vec<u8>, Answer> {
    match response {
        Ok(r) if r.status().is_success() => read_body(r, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| Answer::Unknown(format!("no complete answer from Graph: {e}"))),
        other => Err(answer(other).await),
    }
}

/// Reads a response into an [`Answer`].
pub(super) async fn answer(response: Result<reqwest::Response, reqwest::Error>) -> Answer {
    // Without the URL: an upload session's URL carries its own authorization.
    let r = match response {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            return Answer::NotSent(format!("Graph unreachable: {}", e.without_url()))
        }
        Err(e) => return Answer::Unknown(format!("no answer from Graph: {}", e.without_url())),
    };
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after(v, std::time::SystemTime::now()));
    // An error's code and message are at its start: the rest is not read.
    let error = match read_start(r, MAX_ERROR_BYTES).await {
        Ok((body, _)) => graph_error(&body),
        Err(_) => String::new(),
    };
    Answer::Status(status, retry_after, error)
}

/// The seconds a `Retry-After` value asks for: a number of seconds or an HTTP date (RFC 9110
/// §10.2.3), at most [`MAX_RETRY_AFTER_SECS`]. Anything else (negative, a fraction, text) is
/// no figure, and the spool's own backoff applies.
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<u64> {
    let value = value.trim();
    let secs = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u64>().unwrap_or(u64::MAX)
    } else {
        httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .map_or(0, |d| d.as_secs())
    };
    Some(secs.min(MAX_RETRY_AFTER_SECS))
}

/// A response's body, read as it streams and refused past `limit` bytes: an endless or huge
/// body from a broken or hostile endpoint never fills the memory.
pub(super) async fn read_body(r: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let (body, whole) = read_start(r, limit).await?;
    match whole {
        true => Ok(body),
        false => Err(format!("the answer is over {} MiB", limit >> 20)),
    }
}

/// Up to `limit` bytes of a response's body, and whether that was all of it.
async fn read_start(mut r: reqwest::Response, limit: usize) -> Result<(Vec<u8>, bool), String> {
    let mut out = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| e.without_url().to_string())? {
        if out.len() + chunk.len() > limit {
            out.extend_from_slice(&chunk[..limit - out.len()]);
            return Ok((out, false));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, true))
}

/// `code: message` of Graph's error body (`{"error": {"code", "message"}}`), bounded.
fn graph_error(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    let code = v["error"]["code"].as_str().unwrap_or_default();
    let message = v["error"]["message"].as_str().unwrap_or_default();
    sanitize_for_reply(&format!("{code}: {message}"), 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date_and_nothing_else() {
        let now = httpdate::parse_http_date("Sun, 06 Dec 2026 10:00:00 GMT").unwrap();
        let at = |v| retry_after(v, now);
        assert_eq!(at("7"), Some(7));
        assert_eq!(at(" 0 "), Some(0));
        assert_eq!(at("18446744073709551616"), Some(MAX_RETRY_AFTER_SECS));
        assert_eq!(at("Sun, 06 Dec 2026 10:01:30 GMT"), Some(90));
        assert_eq!(at("Sun, 06 Dec 2026 09:00:00 GMT"), Some(0));
        assert_eq!(
            at("Sun, 06 Dec 2099 10:00:00 GMT"),
            Some(MAX_RETRY_AFTER_SECS)
        );
        for bad in ["-5", "1.5", "soon", "", "0x10", "+3"] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_error_never_shows_the_url_an_upload_session_authorizes_with() {
        // Loopback port 1: refused at once. An upload URL carries its own authorization.
        let sent = reqwest::Client::new()
            .put("http://127.0.0.1:1/upload/s1?authtoken=canary-upload-9191")
            .send()
            .await;
        let text = format!("{:?}", answer(sent).await);
        assert!(text.contains("Graph unreachable"), "{text}");
        assert!(!text.contains("canary-upload-9191"), "{text}");
    }
}
