#!/usr/bin/env python3
"""Fake OAuth 2.0 identity provider for the interop tests (stdlib only, 127.0.0.1 only).

  POST /token         grant_type=refresh_token: a known refresh token yields a new access token
                      (which /introspect then accepts for the token's user) and a rotated refresh
                      token; an unknown one yields Entra's invalid_grant shape (AADSTS70000).
  POST /introspect    RFC 7662, what Dovecot's oauth2 passdb asks (introspection_mode = post).
  POST /admin/refresh {"token": RT, "user": U}   registers a refresh token.
  POST /admin/revoke  {"user": U}                revokes every access and refresh token of U.
  POST /admin/revoke-access {"user": U}          revokes only U's access tokens.
  GET  /stats         counters.
"""
import argparse, json, os, secrets, sys, threading, time, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.RLock()
ACCESS = {}    # access token -> user
REFRESH = {}   # refresh token -> user
STATS = {"token_requests": 0, "introspections": 0, "active": 0, "inactive": 0}
LOG = None


def log(msg):
    if LOG:
        with LOCK, open(LOG, "a") as f:
            f.write("%s %s\n" % (time.strftime("%H:%M:%S"), msg))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                return self.send_json(200, dict(STATS, access=len(ACCESS), refresh=len(REFRESH)))
        return self.send_json(404, {"error": "not_found"})

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        raw = self.body()
        if path == "/token":
            form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
            with LOCK:
                STATS["token_requests"] += 1
                user = REFRESH.pop(form.get("refresh_token", ""), None) if form.get("grant_type") == "refresh_token" else None
                if user is None:
                    log("token: invalid_grant")
                    return self.send_json(400, {
                        "error": "invalid_grant",
                        "error_description": "AADSTS70000: The provided grant is invalid or malformed.\r\nTrace ID: 00000000",
                        "error_codes": [70000]})
                at = "at-" + secrets.token_hex(16)
                rt = "rt-" + secrets.token_hex(16)
                ACCESS[at] = user
                REFRESH[rt] = user
            log("token: issued for %s" % user)
            return self.send_json(200, {"token_type": "Bearer", "access_token": at, "refresh_token": rt,
                                        "expires_in": 3600, "scope": form.get("scope", "")})
        if path == "/introspect":
            form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
            with LOCK:
                STATS["introspections"] += 1
                user = ACCESS.get(form.get("token", ""))
                STATS["active" if user else "inactive"] += 1
            if not user:
                return self.send_json(200, {"active": False})
            now = int(time.time())
            return self.send_json(200, {"active": True, "username": user, "email": user, "sub": user,
                                        "iat": now, "exp": now + 3600, "token_type": "Bearer"})
        if path.startswith("/admin/"):
            d = json.loads(raw or b"{}")
            with LOCK:
                if path == "/admin/refresh":
                    REFRESH[d["token"]] = d["user"]
                elif path in ("/admin/revoke", "/admin/revoke-access"):
                    for t in [t for t, u in ACCESS.items() if u == d["user"]]:
                        del ACCESS[t]
                    if path == "/admin/revoke":
                        for t in [t for t, u in REFRESH.items() if u == d["user"]]:
                            del REFRESH[t]
                else:
                    return self.send_json(404, {"error": "not_found"})
            return self.send_json(200, {"ok": True})
        return self.send_json(404, {"error": "not_found"})


def main():
    global LOG
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log")
    p.add_argument("--pidfile")
    a = p.parse_args()
    LOG = a.log
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    if a.pidfile:
        with open(a.pidfile, "w") as f:
            f.write("%d\n" % os.getpid())
    srv.serve_forever()


if __name__ == "__main__":
    main()
