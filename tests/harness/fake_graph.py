#!/usr/bin/env python3
"""Fake Microsoft Graph for the tests (stdlib only, 127.0.0.1 only): the part of Graph the
relay's delivery uses, with Graph's documented answers and errors.

  POST /v1.0/users/{mailbox}/sendMail
      Authorization: Bearer T, checked with the identity provider's /introspect, naming this
      server as the resource: a token for another audience (IMAP/SMTP) is refused with 401
      InvalidAuthenticationToken, a token of another user (or an app-only token registered for
      another mailbox: what RBAC for Applications does) with 403 ErrorAccessDenied.
      Content-Type: text/plain and a base64 RFC 5322 message ("Send messages with MIME
      content", learn.microsoft.com/graph/outlook-send-mime-message): 202 Accepted, empty body.
      Bad base64: 400 ErrorMimeContentInvalidBase64String (same page). No recipient: 400
      ErrorInvalidRecipients. A body over 4 MB: 413 (Microsoft Q&A reports of the MIME send's
      request limit; the sendMail page states none).
      Recipients are the To, Cc and Bcc headers (the MIME form has no envelope); Bcc is removed
      before the message goes out, like Exchange does. The message is submitted to Postfix
      (--smtp-port) so it lands in Dovecot's maildir, and a Sent Items copy is kept by
      Message-ID (MIME sends are saved to Sent Items, per the same page).
      At most 4 requests per mailbox at once; a fifth gets 429 ApplicationThrottled with
      Retry-After ("Microsoft Graph throttling limits", Outlook service limits: 4 concurrent
      requests per app and mailbox).
  GET  /v1.0/users/{mailbox}/mailFolders/sentitems/messages?$filter=internetMessageId eq '<id>'
      {"value": [{"id", "internetMessageId"}]} (Mail.ReadBasic; same token checks).

  Large messages ("Attach large files to Outlook messages",
  learn.microsoft.com/graph/outlook-large-attachments):
  POST /v1.0/users/{mailbox}/messages                      a draft from base64 MIME: 201 {"id"}
                                                           (413 over 4 MB, like sendMail)
  POST /v1.0/users/{mailbox}/messages/{id}/attachments/createUploadSession
      {"AttachmentItem": {"attachmentType": "file", "name", "size", "contentType"}}: 201
      {"uploadUrl", "expirationDateTime", "nextExpectedRanges": ["0-"]}; a size under 3 MB is
      refused (400: such attachments are posted whole).
  PUT  {uploadUrl}  Content-Range: bytes a-b/total, at most 4 MB per request, in order; an
      Authorization header is refused (401: the URL carries its own authorization). 200 with
      nextExpectedRanges, 201 once complete.
  POST /v1.0/users/{mailbox}/messages/{id}/send            202; the draft with its attachments
                                                           goes out like a sendMail.
  DELETE /v1.0/users/{mailbox}/messages/{id}               204.

  Test controls (not Graph):
  POST /admin/mode  {"mailbox", "status": 429|503|504|403, "count": n, "retry_after": s}
                    the mailbox's next n sendMail requests answer that way. 504 sends the
                    message first and then answers 504 (a gateway timeout after the fact,
                    reported on Microsoft Q&A); 503 is "down", 429 throttled.
  POST /admin/down  {"mailbox", "seconds": s}  the mailbox's sendMail answers 503 (Retry-After:
                    1) for s seconds.
  POST /admin/delay {"mailbox", "seconds": s}  each of its requests is held s seconds (so that
                    concurrency shows).
  GET  /stats       per mailbox: answers by status, the most requests at once, Sent Items
                    lookups; sends by Message-ID (duplicates show as counts above 1).
  Every control is per mailbox, so tests running side by side do not disturb each other.
"""
import argparse, base64, binascii, json, os, smtplib, threading, time, urllib.parse, urllib.request
from email import policy
from email.parser import BytesParser
from email.utils import getaddresses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
MAX_BODY = 4 * 1024 * 1024
MAX_CONCURRENT = 4
STATE = {}


def reset():
    STATE.clear()
    STATE.update(modes={}, down_until={}, delay={}, in_flight={}, max_concurrent={},
                 statuses={}, sends={}, sent_items={}, lookups={}, drafts={}, uploads={},
                 chunks={})


reset()
ARGS = None


def graph_error(code, message):
    return {"error": {"code": code, "message": message,
                      "innerError": {"request-id": "00000000-0000-0000-0000-000000000000"}}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, obj=None, headers=()):
        body = json.dumps(obj).encode() if obj is not None else b""
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if obj is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with LOCK:
            per = STATE["statuses"].setdefault(getattr(self, "mailbox", "-"), {})
            per[str(status)] = per.get(str(status), 0) + 1

    def body(self):
        n = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(n) if n else b""

    def caller(self, mailbox):
        """The token's user if it may act for mailbox; otherwise answers and returns None."""
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            self.reply(401, graph_error("InvalidAuthenticationToken", "Access token is empty."))
            return None
        form = urllib.parse.urlencode({"token": auth[7:], "resource": ARGS.resource}).encode()
        with urllib.request.urlopen("http://127.0.0.1:%d/introspect" % ARGS.idp_port, form, timeout=5) as r:
            answer = json.load(r)
        if not answer.get("active"):
            self.reply(401, graph_error("InvalidAuthenticationToken",
                                        "Access token validation failure. Invalid audience."))
            return None
        if answer.get("username", "").lower() != mailbox.lower():
            self.reply(403, graph_error("ErrorAccessDenied", "Access is denied. Check credentials and try again."))
            return None
        return answer["username"]

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/stats":
            with LOCK:
                out = {k: v for k, v in STATE.items() if k not in ("modes", "in_flight", "drafts", "uploads")}
            return self.reply(200, out)
        parts = url.path.split("/")
        # /v1.0/users/{mailbox}/mailFolders/sentitems/messages
        if len(parts) == 7 and parts[1:3] == ["v1.0", "users"] and parts[4:] == ["mailFolders", "sentitems", "messages"]:
            mailbox = self.mailbox = urllib.parse.unquote(parts[3]).lower()
            if self.caller(mailbox) is None:
                return
            flt = urllib.parse.parse_qs(url.query).get("$filter", [""])[0]
            prefix = "internetMessageId eq '"
            if not (flt.startswith(prefix) and flt.endswith("'")):
                return self.reply(400, graph_error("ErrorInvalidUrlQueryFilter", "The $filter is not supported."))
            wanted = flt[len(prefix):-1].replace("''", "'")
            with LOCK:
                STATE["lookups"][mailbox] = STATE["lookups"].get(mailbox, 0) + 1
                found = [m for m in STATE["sent_items"].get(mailbox, []) if m["internetMessageId"] == wanted]
            return self.reply(200, {"value": found})
        self.reply(404, graph_error("ResourceNotFound", "Resource not found."))

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/admin/"):
            return self.admin(path, json.loads(self.body() or b"{}"))
        parts = path.split("/")
        if len(parts) >= 5 and parts[1:3] == ["v1.0", "users"] and parts[4] == "messages":
            return self.draft_call(urllib.parse.unquote(parts[3]).lower(), parts[5:])
        if not (len(parts) == 5 and parts[1:3] == ["v1.0", "users"] and parts[4] == "sendMail"):
            self.body()
            return self.reply(404, graph_error("ResourceNotFound", "Resource not found."))
        mailbox = self.mailbox = urllib.parse.unquote(parts[3]).lower()
        raw = self.body()
        if self.caller(mailbox) is None:
            return
        with LOCK:
            n = STATE["in_flight"].get(mailbox, 0) + 1
            if n > MAX_CONCURRENT:
                throttled = True
            else:
                throttled = False
                STATE["in_flight"][mailbox] = n
                STATE["max_concurrent"][mailbox] = max(n, STATE["max_concurrent"].get(mailbox, 0))
        if throttled:
            return self.reply(429, graph_error("ApplicationThrottled", "Application is over its MailboxConcurrency limit."),
                              [("Retry-After", "1")])
        try:
            self.send_mail(mailbox, raw)
        finally:
            with LOCK:
                STATE["in_flight"][mailbox] -= 1

    def take_mode(self, mailbox):
        with LOCK:
            if time.time() < STATE["down_until"].get(mailbox, 0):
                return {"status": 503, "retry_after": 1}
            mode = STATE["modes"].get(mailbox)
            if mode and mode["count"] > 0:
                mode["count"] -= 1
                return mode
        return None

    def draft_call(self, mailbox, rest):
        self.mailbox = mailbox
        raw = self.body()
        if self.caller(mailbox) is None:
            return
        if not rest:  # a draft from MIME
            if len(raw) > MAX_BODY:
                return self.reply(413, graph_error("RequestEntityTooLarge", "The maximum request length supported is 4MB."))
            try:
                mime = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                return self.reply(400, graph_error("ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content."))
            with LOCK:
                did = "draft-%d" % (len(STATE["drafts"]) + 1)
                STATE["drafts"][did] = {"mailbox": mailbox, "mime": mime, "attachments": []}
            return self.reply(201, {"id": did})
        did = urllib.parse.unquote(rest[0])
        with LOCK:
            draft = STATE["drafts"].get(did)
        if draft is None or draft["mailbox"] != mailbox:
            return self.reply(404, graph_error("ErrorItemNotFound", "The specified object was not found in the store."))
        if rest[1:] == ["attachments", "createUploadSession"]:
            item = json.loads(raw or b"{}").get("AttachmentItem", {})
            if int(item.get("size", 0)) < 3 * 1024 * 1024:
                return self.reply(400, graph_error("ErrorInvalidRequest", "Attachments under 3 MB are posted whole."))
            with LOCK:
                sid = "s%d" % (len(STATE["uploads"]) + 1)
                STATE["uploads"][sid] = {"draft": did, "item": item, "data": b""}
            return self.reply(201, {"uploadUrl": "http://127.0.0.1:%d/upload/%s" % (ARGS.port, sid),
                                    "expirationDateTime": "2099-01-01T00:00:00Z", "nextExpectedRanges": ["0-"]})
        if rest[1:] == ["send"]:
            import email.policy
            msg = BytesParser(policy=email.policy.default).parsebytes(draft["mime"])
            for a in draft["attachments"]:
                maintype, _, subtype = a["contentType"].partition("/")
                msg.add_attachment(a["data"], maintype=maintype, subtype=subtype or "octet-stream", filename=a["name"])
            with LOCK:
                del STATE["drafts"][did]
            return self.deliver(mailbox, msg.as_bytes(policy=email.policy.default.clone(linesep="\r\n")), None)
        return self.reply(404, graph_error("ResourceNotFound", "Resource not found."))

    def do_DELETE(self):
        parts = urllib.parse.urlsplit(self.path).path.split("/")
        if len(parts) == 6 and parts[1:3] == ["v1.0", "users"] and parts[4] == "messages":
            mailbox = self.mailbox = urllib.parse.unquote(parts[3]).lower()
            if self.caller(mailbox) is None:
                return
            with LOCK:
                STATE["drafts"].pop(urllib.parse.unquote(parts[5]), None)
            return self.reply(204)
        self.reply(404, graph_error("ResourceNotFound", "Resource not found."))

    def do_PUT(self):
        parts = urllib.parse.urlsplit(self.path).path.split("/")
        raw = self.body()
        with LOCK:
            up = STATE["uploads"].get(parts[-1]) if len(parts) == 3 and parts[1] == "upload" else None
        if up is None:
            return self.reply(404, graph_error("ResourceNotFound", "Resource not found."))
        self.mailbox = STATE["drafts"].get(up["draft"], {}).get("mailbox", "-")
        if "Authorization" in self.headers:
            return self.reply(401, graph_error("InvalidAuthenticationToken", "Do not send an Authorization header to the upload URL."))
        if len(raw) > MAX_BODY:
            return self.reply(413, graph_error("RequestEntityTooLarge", "At most 4 MB per request."))
        total = int(up["item"]["size"])
        try:
            unit, span = self.headers.get("Content-Range", "").split(" ")
            first, last = (int(x) for x in span.split("/")[0].split("-"))
        except ValueError:
            return self.reply(400, graph_error("InvalidRange", "Content-Range: bytes first-last/total is needed."))
        if unit != "bytes" or first != len(up["data"]) or last - first + 1 != len(raw) or last >= total:
            return self.reply(416, graph_error("InvalidRange", "The range is not the next expected one."))
        with LOCK:
            up["data"] += raw
            STATE["chunks"][self.mailbox] = STATE["chunks"].get(self.mailbox, 0) + 1
            done = len(up["data"]) == total
            if done:
                draft = STATE["drafts"].get(up["draft"])
                if draft is not None:
                    draft["attachments"].append({"name": up["item"].get("name", "attachment"),
                                                 "contentType": up["item"].get("contentType", "application/octet-stream"),
                                                 "data": up["data"]})
        if done:
            return self.reply(201)
        self.reply(200, {"expirationDateTime": "2099-01-01T00:00:00Z", "nextExpectedRanges": ["%d-" % len(up["data"])]})

    def send_mail(self, mailbox, raw):
        time.sleep(STATE["delay"].get(mailbox, 0))
        mode = self.take_mode(mailbox)
        status = mode and int(mode["status"])
        after = [("Retry-After", str(mode.get("retry_after", 1)))] if mode and mode.get("retry_after") is not None else []
        if status == 429:
            return self.reply(429, graph_error("ApplicationThrottled", "Application is over its MailboxConcurrency limit."), after)
        if status == 503:
            return self.reply(503, graph_error("ServiceUnavailable", "Service Unavailable"), after)
        if status == 403:
            return self.reply(403, graph_error("ErrorAccessDenied", "Access is denied. Check credentials and try again."))
        if len(raw) > MAX_BODY:
            return self.reply(413, graph_error("RequestEntityTooLarge",
                                               "The maximum request length supported is 4MB."))
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "text/plain":
            return self.reply(400, graph_error("ErrorInvalidRequest", "The MIME form needs Content-Type: text/plain."))
        try:
            mime = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return self.reply(400, graph_error("ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content."))
        return self.deliver(mailbox, mime, status)

    def deliver(self, mailbox, mime, status):
        """Sends a MIME message like Exchange: to its To, Cc and Bcc, without the Bcc field."""
        msg = BytesParser(policy=policy.compat32).parsebytes(mime)
        rcpts = [a for _, a in getaddresses(msg.get_all("To", []) + msg.get_all("Cc", []) + msg.get_all("Bcc", [])) if a]
        if not rcpts:
            return self.reply(400, graph_error("ErrorInvalidRecipients", "At least one recipient is not valid."))
        del msg["Bcc"]
        out = msg.as_bytes(policy=policy.compat32.clone(linesep="\r\n"))
        # Counted and saved to Sent Items before it goes out, as Exchange does: whoever sees the
        # delivered copy also sees the count.
        mid = (msg.get("Message-ID") or "").strip()
        with LOCK:
            STATE["sends"][mid] = STATE["sends"].get(mid, 0) + 1
            STATE["sent_items"].setdefault(mailbox, []).append(
                {"id": "AAMk%d" % len(STATE["sends"]), "internetMessageId": mid})
        with smtplib.SMTP("127.0.0.1", ARGS.smtp_port, timeout=30) as s:
            s.sendmail(mailbox, rcpts, out)
        if status == 504:
            return self.reply(504, graph_error("GatewayTimeout", "The gateway did not receive a response in time."))
        self.reply(202)

    def admin(self, path, d):
        with LOCK:
            if path == "/admin/mode":
                STATE["modes"][d["mailbox"].lower()] = dict(d)
            elif path == "/admin/down":
                STATE["down_until"][d["mailbox"].lower()] = time.time() + float(d["seconds"])
            elif path == "/admin/delay":
                STATE["delay"][d["mailbox"].lower()] = float(d["seconds"])
            elif path == "/admin/reset":
                reset()
            else:
                return self.reply(404, {"error": "not_found"})
        self.reply(200, {"ok": True})


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--idp-port", type=int, required=True)
    p.add_argument("--smtp-port", type=int, required=True)
    p.add_argument("--pidfile")
    ARGS = p.parse_args()
    ARGS.resource = "http://127.0.0.1:%d" % ARGS.port
    srv = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    srv.daemon_threads = True
    if ARGS.pidfile:
        with open(ARGS.pidfile, "w") as f:
            f.write("%d\n" % os.getpid())
    srv.serve_forever()


if __name__ == "__main__":
    main()
