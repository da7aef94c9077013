//! Messages too large for one Graph `sendMail` request, sent the way Microsoft documents for
//! large attachments ("Attach large files to Outlook messages",
//! learn.microsoft.com/graph/outlook-large-attachments): a draft made from the message without
//! its large attachments (MIME form, `POST /users/{id}/messages`), each of those attachments
//! uploaded through an upload session in ranges (`createUploadSession`, then `PUT` to its URL,
//! which carries its own authorization: no bearer token is sent there), then
//! `POST /messages/{id}/send`. Needs `Mail.ReadWrite` as well as `Mail.Send`.
//!
//! Only attachments of at least 3 MB are uploaded (Microsoft's lower bound for upload
//! sessions); a message that is still too large without them fails as before.

use super::graph::{Answer, Client};
use crate::auth::tokens::AccessToken;
use base64::Engine;
use mail_parser::{MessageParser, MimeHeaders};

/// Microsoft's smallest attachment for an upload session.
const MIN_UPLOAD: usize = 3 * 1024 * 1024;
/// Bytes per `PUT` (Microsoft: at most 4 MB per request; ten times 320 KiB).
const CHUNK: usize = 10 * 320 * 1024;

/// A message split for the draft-and-upload path.
#[derive(Debug)]
pub(super) struct Split {
    /// The message without the uploaded attachments.
    pub draft: Vec<u8>,
    /// The attachments to upload, largest first.
    pub uploads: Vec<Upload>,
}

/// One attachment taken out of the message.
#[derive(Debug)]
pub(super) struct Upload {
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// Takes attachments of 3 MB or more out of `message`, largest first, until the rest fits in
/// `limit` bytes of base64; `None` if no such split makes it fit.
pub(super) fn split(message: &[u8], limit: usize) -> Option<Split> {
    let parsed = MessageParser::default().parse(message)?;
    let mut candidates: Vec<_> = parsed
        .attachments()
        .filter(|p| p.contents().len() >= MIN_UPLOAD)
        .map(|p| {
            let start = delimiter_start(message, p.offset_header as usize);
            let end = (p.offset_end as usize).min(message.len());
            (start, end, p)
        })
        .collect();
    candidates.sort_by_key(|(start, end, _)| std::cmp::Reverse(end - start));
    let mut cut: Vec<(usize, usize)> = Vec::new();
    let mut uploads = Vec::new();
    let mut size = message.len();
    for (start, end, part) in candidates {
        if base64_len(size) <= limit {
            break;
        }
        size -= end - start;
        cut.push((start, end));
        let content_type = part.content_type().map_or_else(
            || "application/octet-stream".to_owned(),
            |c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("octet-stream")),
        );
        uploads.push(Upload {
            name: part.attachment_name().map_or_else(
                || format!("attachment-{}", uploads.len() + 1),
                str::to_owned,
            ),
            content_type,
            bytes: part.contents().to_vec(),
        });
    }
    if uploads.is_empty() || base64_len(size) > limit {
        return None;
    }
    cut.sort();
    let mut draft = Vec::with_capacity(size);
    let mut at = 0;
    for (start, end) in cut {
        draft.extend_from_slice(&message[at..start]);
        at = end;
    }
    draft.extend_from_slice(&message[at..]);
    Some(Split { draft, uploads })
}

/// Where the part whose headers start at `header` begins with its delimiter: the line break
/// before the `--boundary` line (RFC 2046 §5.1.1: that line break belongs to the delimiter).
fn delimiter_start(message: &[u8], header: usize) -> usize {
    let before = &message[..header.min(message.len())];
    let line_end = before.len().saturating_sub(1); // the boundary line's own LF
    match before[..line_end].iter().rposition(|&b| b == b'\n') {
        // Keep nothing of the delimiter: start at the CR (or LF) before `--boundary`.
        Some(lf) if lf > 0 && before[lf - 1] == b'\r' => lf - 1,
        Some(lf) => lf,
        None => 0,
    }
}

fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Sends a split message: draft, uploads, send. The draft is deleted if a step fails.
pub(super) async fn send(client: &Client<'_>, token: &AccessToken, split: &Split) -> Answer {
    let engine = base64::engine::general_purpose::STANDARD;
    let created = client
        .post_raw(token, "messages", engine.encode(&split.draft).into_bytes())
        .await;
    let id = match created {
        Ok(body) => match serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
        {
            Some(id) => id,
            None => return Answer::Status(502, None, "the draft's answer has no id".into()),
        },
        Err(answer) => return answer,
    };
    let message = format!("messages/{}", super::graph::url_escape(&id));
    for upload in &split.uploads {
        if let Err(answer) = upload_one(client, token, &message, upload).await {
            client.delete(token, &message).await;
            return answer;
        }
    }
    match client
        .post_raw(token, &format!("{message}/send"), Vec::new())
        .await
    {
        Ok(_) => Answer::Status(202, None, String::new()),
        Err(Answer::Status(status, after, why)) if status < 500 && status != 429 => {
            client.delete(token, &message).await;
            Answer::Status(status, after, why)
        }
        Err(other) => other,
    }
}

/// One attachment through an upload session, in ranges of [`CHUNK`] bytes.
async fn upload_one(
    client: &Client<'_>,
    token: &AccessToken,
    message: &str,
    upload: &Upload,
) -> Result<(), Answer> {
    let item = serde_json::json!({
        "AttachmentItem": {
            "attachmentType": "file",
            "name": upload.name,
            "size": upload.bytes.len(),
            "contentType": upload.content_type,
        }
    });
    let session = client
        .post_json(
            token,
            &format!("{message}/attachments/createUploadSession"),
            &item,
        )
        .await?;
    let url = serde_json::from_slice::<serde_json::Value>(&session)
        .ok()
        .and_then(|v| v["uploadUrl"].as_str().map(str::to_owned))
        .ok_or_else(|| Answer::Status(502, None, "the upload session has no URL".into()))?;
    let total = upload.bytes.len();
    for (i, chunk) in upload.bytes.chunks(CHUNK).enumerate() {
        let first = i * CHUNK;
        let range = format!("bytes {first}-{}/{total}", first + chunk.len() - 1);
        client.put_range(&url, &range, chunk.to_vec()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn multipart(big: usize) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(vec![7u8; big]);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "From: a@x.example\r\nTo: b@x.example\r\nMessage-ID: <m@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"BB\"\r\n\r\npreamble\r\n--BB\r\nContent-Type: text/plain\r\n\r\nthe scan is attached\r\n--BB\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"scan.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--BB\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"small.txt\"\r\n\r\nsmall\r\n--BB--\r\n",
            lines.join("\r\n")
        )
        .into_bytes()
    }

    #[test]
    fn large_attachments_are_taken_out_and_the_rest_stays_valid_mime() {
        let message = multipart(5 * 1024 * 1024);
        assert!(message.len() > 6_000_000);
        let s = split(&message, 4 << 20).expect("splits");
        assert_eq!(s.uploads.len(), 1);
        let u = &s.uploads[0];
        assert_eq!(
            (u.name.as_str(), u.content_type.as_str()),
            ("scan.pdf", "application/pdf")
        );
        assert_eq!(u.bytes, vec![7u8; 5 * 1024 * 1024]);
        let draft = String::from_utf8(s.draft).unwrap();
        assert!(draft.len() < 1000, "{draft}");
        assert!(
            draft.ends_with("the scan is attached\r\n--BB\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"small.txt\"\r\n\r\nsmall\r\n--BB--\r\n"),
            "{draft}"
        );
        let reparsed = MessageParser::default().parse(draft.as_bytes()).unwrap();
        assert_eq!(reparsed.attachments().count(), 1);
        assert_eq!(
            reparsed.body_text(0).as_deref(),
            Some("the scan is attached")
        );
    }

    #[test]
    fn no_split_when_nothing_large_enough_can_go() {
        // Fits already, or too large without an attachment to take out.
        assert!(split(&multipart(1000), 4 << 20).is_none());
        let plain = vec![b'a'; 5 << 20];
        assert!(split(&plain, 4 << 20).is_none());
        assert!(split(&multipart(5 << 20), 300).is_none());
    }
}
