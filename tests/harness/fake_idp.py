#!/usr/bin/env python3
"""Fake OAuth 2.0 identity provider for the tests (stdlib + the openssl tool, 127.0.0.1 only).

Microsoft-shaped endpoints under /{tenant}/oauth2/v2.0/ (and /token for older tests):
  GET  .../authorize  sign-in and consent page (authorization code + PKCE S256): the user
                      (login_hint, editable), Accept and Decline buttons. Accept redirects to
                      redirect_uri?code=..&state=..; Decline sends error=access_denied
                      (AADSTS65004). The redirect URI must end in /register_microsoft_graph_api/.
  POST .../authorize  the consent form's target.
  POST .../devicecode device authorization (RFC 8628); the user approves at /devicelogin.
  POST .../token      grant_type refresh_token | authorization_code (checks redirect_uri, the PKCE
                      verifier and the client secret) | device_code (authorization_pending,
                      slow_down, expired_token) | client_credentials (client secret, or an RS256
                      client assertion checked against the registered certificate).
  Errors have Entra's shape: error, error_description "AADSTSnnn: ...", error_codes.
  Known tenants: contoso, common, organizations, consumers; any other path tenant answers 400
  invalid_request AADSTS90002 "Tenant ... not found" at each endpoint, as Entra does
  (learn.microsoft.com/entra/identity-platform/reference-error-codes, 90002).
  With the openid scope (asked at the authorize or devicecode step, remembered for the code or
  device code like Entra does), the answer carries an ID token naming the user who signed in:
  preferred_username with profile, email with email (learn.microsoft.com/entra/identity-platform/
  id-token-claims-reference). Its signature is a placeholder: the relay reads, never trusts it.
  A known refresh token yields a new access token (which /introspect then accepts for the
  token's user) and a rotated refresh token; an unknown one yields invalid_grant (AADSTS70000).

  GET  /devicelogin   the device-code page (enter the code and the user).
  POST /introspect    RFC 7662, what Dovecot's oauth2 passdb asks (introspection_mode = post).
                      With resource=R (the fake Graph asks so) a token is active only if it was
                      issued for R; without (Dovecot), any token but one for --graph-resource.
  POST /admin/refresh {"token": RT, "user": U}   registers a refresh token.
  POST /admin/client  {"client_id", "secret"?, "cert_pem"?, "mailbox"?, "slow_down"?: n}
                      registers an app; mailbox: the user its app-only tokens act for.
  POST /admin/fail    {"mode": "500" | "timeout" | "garbage", "count": n}: the next n token
                      requests fail that way.
  POST /admin/revoke  {"user": U}                revokes every access and refresh token of U.
  POST /admin/revoke-access {"user": U}          revokes only U's access tokens.
  GET  /stats         counters.
  GET  /seen          every code, state, PKCE challenge and verifier, device code and client
                      assertion handled, for the tests' secret scans.
"""
import argparse, base64, hashlib, html, json, os, re, secrets, subprocess, tempfile, threading, time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.RLock()
ACCESS = {}    # access token -> user
AUDIENCE = {}  # access token -> the resource it was issued for (its "aud")
GRAPH_RESOURCE = "http://127.0.0.1:11081"  # --graph-resource: whose tokens Dovecot must refuse
REFRESH = {}   # refresh token -> user
CLIENTS = {}   # client_id -> {"secret", "cert_pem", "mailbox", "slow_down"}
CODES = {}     # authorization code -> {"user", "client_id", "redirect_uri", "challenge"}
DEVICES = {}   # device_code -> {"user_code", "client_id", "user", "expires", "slow_down"}
FAIL = {"mode": None, "count": 0}
SEEN = []      # every code, state, PKCE verifier, device code and client assertion handled:
               # the tests scan the relay's logs and pages for them
STATS = {"token_requests": 0, "introspections": 0, "active": 0, "inactive": 0,
         "grants": {}, "assertions_verified": 0}
KNOWN_TENANTS = ("contoso", "common", "organizations", "consumers")
TENANT_PATH = re.compile(r"^/([A-Za-z0-9._-]+)/oauth2/v2\.0/(authorize|token|devicecode)$")
LOG = None


def log(msg):
    if LOG:
        with LOCK, open(LOG, "a") as f:
            f.write("%s %s\n" % (time.strftime("%H:%M:%S"), msg))


def entra_error(error, code, text):
    return {"error": error,
            "error_description": "AADSTS%d: %s\r\nTrace ID: 00000000\r\nCorrelation ID: 11111111" % (code, text),
            "error_codes": [code]}


def unknown_tenant(tenant):
    return entra_error("invalid_request", 90002,
                       "Tenant '%s' not found. Check to make sure you have the correct tenant ID and are "
                       "signing into the correct cloud." % tenant)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def verify_assertion(jwt, client, token_url):
    """Checks an RS256 client assertion against the client's certificate; None when valid."""
    try:
        head, body, sig = jwt.split(".")
        header = json.loads(b64url_decode(head))
        claims = json.loads(b64url_decode(body))
    except Exception:
        return "malformed assertion"
    if header.get("alg") != "RS256" or "x5t" not in header:
        return "the header must carry alg RS256 and x5t"
    der = base64.b64decode("".join(l for l in client["cert_pem"].splitlines() if "-----" not in l))
    if header["x5t"] != b64url(hashlib.sha1(der).digest()):
        return "x5t does not match the registered certificate"
    if claims.get("iss") != client["client_id"] or claims.get("sub") != client["client_id"]:
        return "iss and sub must be the client id"
    if claims.get("aud") != token_url:
        return "aud must be the token endpoint (%s)" % token_url
    now = time.time()
    if not (claims.get("nbf", 0) - 300 <= now <= claims.get("exp", 0)):
        return "the assertion is expired or not yet valid"
    with tempfile.TemporaryDirectory() as d:
        cert, pub, data, sigf = (os.path.join(d, n) for n in ("c.pem", "p.pem", "data", "sig"))
        with open(cert, "w") as f:
            f.write(client["cert_pem"])
        with open(data, "wb") as f:
            f.write((head + "." + body).encode())
        with open(sigf, "wb") as f:
            f.write(b64url_decode(sig))
        subprocess.run(["openssl", "x509", "-in", cert, "-pubkey", "-noout", "-out", pub], check=True)
        r = subprocess.run(["openssl", "dgst", "-sha256", "-verify", pub, "-signature", sigf, data],
                           capture_output=True)
    if r.returncode != 0:
        return "bad signature"
    with LOCK:
        STATS["assertions_verified"] += 1
    return None


OIDC_SCOPES = ("offline_access", "openid", "profile", "email")


def resources(scope):
    """The resources a space-separated scope list names: a scope is RESOURCE/PERMISSION
    ("https://graph.microsoft.com/Mail.Send", ".../.default"); OpenID scopes name none."""
    out = set()
    for s in scope.split():
        if s in OIDC_SCOPES:
            continue
        out.add(s.rsplit("/", 1)[0] if "://" in s else s)
    return out


def id_token(user, form):
    """An ID token for user, shaped like Entra's v2.0 tokens (header.claims.signature)."""
    scopes = form.get("scope", "").split()
    now = int(time.time())
    claims = {"ver": "2.0", "iss": "https://login.example/contoso/v2.0", "aud": form.get("client_id", ""),
              "sub": hashlib.sha256(user.encode()).hexdigest()[:22], "iat": now, "nbf": now, "exp": now + 3600}
    if "profile" in scopes:
        claims["preferred_username"] = user
    if "email" in scopes:
        claims["email"] = user
    head = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "fake"}).encode())
    return "%s.%s.%s" % (head, b64url(json.dumps(claims).encode()), b64url(b"not-a-signature"))


def issue(user, form, with_refresh=True):
    """New tokens for user (call with LOCK held). Like Entra, the access token is for one
    resource (its audience): a Graph token is refused by the mail servers and the other way
    round (learn.microsoft.com/entra/identity-platform/access-tokens, the aud claim)."""
    at = "at-" + secrets.token_hex(16)
    ACCESS[at] = user
    AUDIENCE[at] = next(iter(resources(form.get("scope", ""))), "")
    out = {"token_type": "Bearer", "access_token": at, "expires_in": 3600, "scope": form.get("scope", "")}
    if "openid" in form.get("scope", "").split():
        out["id_token"] = id_token(user, form)
    if with_refresh:
        rt = "rt-" + secrets.token_hex(16)
        REFRESH[rt] = user
        out["refresh_token"] = rt
    return out


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

    def send_html(self, code, body):
        data = ("<!doctype html><html><head><meta charset=utf-8><title>Fake identity provider</title>"
                "</head><body>%s</body></html>" % body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def redirect(self, url):
        self.send_response(302)
        self.send_header("Location", url)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def base(self):
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    # ------------------------------------------------------------------ GET

    def do_GET(self):
        parts = urllib.parse.urlsplit(self.path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()}
        if parts.path == "/seen":
            with LOCK:
                return self.send_json(200, [v for v in SEEN if v])
        if parts.path == "/stats":
            with LOCK:
                return self.send_json(200, dict(STATS, access=len(ACCESS), refresh=len(REFRESH)))
        m = TENANT_PATH.match(parts.path)
        if m and m.group(1) not in KNOWN_TENANTS:
            return self.send_html(400, "<p id=error>%s</p>" % html.escape(
                unknown_tenant(m.group(1))["error_description"].splitlines()[0]))
        if m and m.group(2) == "authorize":
            return self.authorize_page(m.group(1), q)
        if parts.path == "/devicelogin":
            return self.send_html(200, '<h1>Enter code</h1><form method="post" action="/devicelogin">'
                                  '<label>Code <input name="user_code" id="user_code"></label>'
                                  '<label>Account <input name="user" id="user"></label>'
                                  '<button id="next" type="submit">Next</button></form>')
        return self.send_json(404, {"error": "not_found"})

    def authorize_page(self, tenant, q):
        if q.get("client_id", "") not in CLIENTS:
            return self.send_html(400, "<p id=error>AADSTS700016: Application with identifier '%s' was not found.</p>"
                                  % html.escape(q.get("client_id", "")))
        if (q.get("response_type") != "code" or q.get("code_challenge_method") != "S256"
                or not q.get("code_challenge") or not q.get("state")):
            return self.send_html(400, "<p id=error>response_type=code, state and a PKCE S256 challenge are required</p>")
        if not q.get("redirect_uri", "").endswith("/register_microsoft_graph_api/"):
            return self.send_html(400, "<p id=error>AADSTS50011: The redirect URI does not match the redirect URIs "
                                  "configured for the application.</p>")
        fields = "".join('<input type=hidden name="%s" value="%s">' % (html.escape(k), html.escape(v))
                         for k, v in q.items()
                         if k in ("client_id", "redirect_uri", "state", "code_challenge", "scope"))
        with LOCK:
            SEEN.extend([q["state"], q["code_challenge"]])
        log("authorize page for %s" % q.get("login_hint", "?"))
        return self.send_html(200, '<h1>Sign in to %s</h1><form method="post" action="/%s/oauth2/v2.0/authorize">%s'
                              '<label>Account <input name="user" id="user" value="%s"></label>'
                              '<p>The app asks for: %s</p>'
                              '<button type="submit" name="decision" value="accept" id="accept">Accept</button>'
                              '<button type="submit" name="decision" value="decline" id="decline">Decline</button>'
                              '</form>' % (html.escape(tenant), html.escape(tenant), fields,
                                           html.escape(q.get("login_hint", "")), html.escape(q.get("scope", ""))))

    # ------------------------------------------------------------------ POST

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        raw = self.body()
        m = TENANT_PATH.match(path)
        if path.startswith("/admin/"):
            return self.admin(path, json.loads(raw or b"{}"))
        form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode(errors="replace")).items()}
        if m and m.group(1) not in KNOWN_TENANTS:
            return self.send_json(400, unknown_tenant(m.group(1)))
        if m and m.group(2) == "authorize":
            return self.consent(form)
        if m and m.group(2) == "devicecode":
            return self.device_authorization(form)
        if path == "/devicelogin":
            with LOCK:
                for d in DEVICES.values():
                    if d["user_code"] == form.get("user_code", "").strip().upper():
                        d["user"] = form.get("user", "")
                        return self.send_html(200, "<p id=done>You have signed in to the application on your "
                                              "device. You may now close this window.</p>")
            return self.send_html(400, "<p id=error>That code was not recognized.</p>")
        if path == "/token" or (m and m.group(2) == "token"):
            return self.token(form, self.base() + path)
        if path == "/introspect":
            with LOCK:
                STATS["introspections"] += 1
                token = form.get("token", "")
                user = ACCESS.get(token)
                # A resource server names itself (the fake Graph); Dovecot does not, and stands
                # for the mail resource: any token but a Graph one.
                aud = AUDIENCE.get(token)
                wanted = form.get("resource")
                if user is not None and (aud != wanted if wanted else aud == GRAPH_RESOURCE):
                    user = None
                STATS["active" if user else "inactive"] += 1
            if not user:
                return self.send_json(200, {"active": False})
            now = int(time.time())
            return self.send_json(200, {"active": True, "username": user, "email": user, "sub": user,
                                        "iat": now, "exp": now + 3600, "token_type": "Bearer"})
        return self.send_json(404, {"error": "not_found"})

    def admin(self, path, d):
        with LOCK:
            if path == "/admin/refresh":
                REFRESH[d["token"]] = d["user"]
            elif path == "/admin/client":
                CLIENTS[d["client_id"]] = d
            elif path == "/admin/fail":
                FAIL.update(mode=d["mode"], count=d["count"])
            elif path in ("/admin/revoke", "/admin/revoke-access"):
                for t in [t for t, u in ACCESS.items() if u == d["user"]]:
                    del ACCESS[t]
                    AUDIENCE.pop(t, None)
                if path == "/admin/revoke":
                    for t in [t for t, u in REFRESH.items() if u == d["user"]]:
                        del REFRESH[t]
            else:
                return self.send_json(404, {"error": "not_found"})
        return self.send_json(200, {"ok": True})

    def consent(self, form):
        if form.get("decision") != "accept":
            return self.redirect(form["redirect_uri"] + "?" + urllib.parse.urlencode({
                "error": "access_denied", "state": form.get("state", ""),
                "error_description": "AADSTS65004: User declined to consent to access the app."}))
        code = "code-" + secrets.token_hex(16)
        with LOCK:
            SEEN.append(code)
            CODES[code] = {"user": form.get("user", ""), "client_id": form.get("client_id"),
                           "redirect_uri": form.get("redirect_uri"), "challenge": form.get("code_challenge"),
                           "scope": form.get("scope", "")}
        log("consent given for %s" % form.get("user"))
        return self.redirect(form["redirect_uri"] + "?" + urllib.parse.urlencode(
            {"code": code, "state": form.get("state", "")}))

    def device_authorization(self, form):
        client = CLIENTS.get(form.get("client_id", ""))
        if client is None:
            return self.send_json(400, entra_error("unauthorized_client", 700016,
                                                   "Application with identifier was not found in the directory."))
        dc, uc = "dc-" + secrets.token_hex(16), secrets.token_hex(4).upper()
        with LOCK:
            SEEN.append(dc)
            DEVICES[dc] = {"user_code": uc, "client_id": form["client_id"], "user": None,
                           "expires": time.time() + 900, "slow_down": client.get("slow_down", 0),
                           "scope": form.get("scope", "")}
        uri = self.base() + "/devicelogin"
        return self.send_json(200, {
            "device_code": dc, "user_code": uc, "verification_uri": uri, "expires_in": 900, "interval": 1,
            "message": "To sign in, use a web browser to open the page %s and enter the code %s to authenticate."
                       % (uri, uc)})

    def fail_if_told(self):
        with LOCK:
            mode = FAIL["mode"] if FAIL["count"] > 0 else None
            if mode:
                FAIL["count"] -= 1
        if mode == "500":
            self.send_json(500, entra_error("server_error", 90033, "A transient error has occurred. Please try again."))
        elif mode == "timeout":
            time.sleep(5)
            self.send_json(504, {})
        elif mode == "garbage":
            body = b"<html>Bad gateway</html>"
            self.send_response(502)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        return mode is not None

    def token(self, form, token_url):
        grant = form.get("grant_type", "")
        with LOCK:
            STATS["token_requests"] += 1
            STATS["grants"][grant] = STATS["grants"].get(grant, 0) + 1
        if self.fail_if_told():
            return
        if len(resources(form.get("scope", ""))) > 1:
            # Entra: one token request, one resource.
            return self.send_json(400, entra_error("invalid_scope", 28000,
                                                   "Provided value for the input parameter scope is not valid "
                                                   "because it contains more than one resource."))
        if grant == "refresh_token":
            with LOCK:
                user = REFRESH.pop(form.get("refresh_token", ""), None)
                out = issue(user, form) if user is not None else None
            if out is None:
                log("token: invalid_grant")
                return self.send_json(400, entra_error("invalid_grant", 70000, "The provided grant is invalid or malformed."))
            log("token: issued for %s" % user)
            return self.send_json(200, out)
        client = CLIENTS.get(form.get("client_id", ""))
        if client is None:
            return self.send_json(400, entra_error("unauthorized_client", 700016,
                                                   "Application with identifier was not found in the directory."))
        secret_ok = client.get("secret") is None or form.get("client_secret") == client.get("secret")
        if grant == "authorization_code":
            return self.code_grant(form, client, secret_ok)
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            return self.device_grant(form)
        if grant == "client_credentials":
            return self.client_grant(form, client, secret_ok, token_url)
        return self.send_json(400, entra_error("unsupported_grant_type", 70003,
                                               "The app requested an unsupported grant type."))

    def code_grant(self, form, client, secret_ok):
        with LOCK:
            SEEN.append(form.get("code_verifier", ""))
            c = CODES.pop(form.get("code", ""), None)
        if c is None or c["client_id"] != form.get("client_id"):
            return self.send_json(400, entra_error("invalid_grant", 70000,
                                                   "The provided authorization code is invalid or has expired."))
        if c["redirect_uri"] != form.get("redirect_uri"):
            return self.send_json(400, entra_error("invalid_grant", 50011,
                                                   "The redirect URI does not match the authorization request's."))
        if b64url(hashlib.sha256(form.get("code_verifier", "").encode()).digest()) != c["challenge"]:
            return self.send_json(400, entra_error("invalid_grant", 501481,
                                                   "The Code_Verifier does not match the code_challenge."))
        if not secret_ok:
            return self.send_json(401, entra_error("invalid_client", 7000215,
                                                   "Invalid client secret provided. Ensure the secret being sent in "
                                                   "the request is the client secret value, not the client secret ID."))
        with LOCK:
            out = issue(c["user"], dict(form, scope=c["scope"]))
        log("token: code exchanged for %s" % c["user"])
        return self.send_json(200, out)

    def device_grant(self, form):
        with LOCK:
            d = DEVICES.get(form.get("device_code", ""))
            if d is None or time.time() > d["expires"]:
                return self.send_json(400, entra_error("expired_token", 70020, "The device code expired."))
            if d["slow_down"] > 0:
                d["slow_down"] -= 1
                return self.send_json(400, entra_error("slow_down", 70016, "Polling too fast."))
            if d["user"] is None:
                return self.send_json(400, entra_error("authorization_pending", 70016,
                                                       "OAuth 2.0 device flow error. Authorization is pending."))
            del DEVICES[form["device_code"]]
            out = issue(d["user"], dict(form, scope=d["scope"]))
        log("token: device code redeemed for %s" % d["user"])
        return self.send_json(200, out)

    def client_grant(self, form, client, secret_ok, token_url):
        scope = form.get("scope", "")
        if not scope.endswith("/.default") or " " in scope:
            return self.send_json(400, entra_error("invalid_scope", 1002012,
                                                   "Client credential flows must have a scope value with /.default."))
        if "client_assertion" in form:
            with LOCK:
                SEEN.append(form["client_assertion"])
            problem = (verify_assertion(form["client_assertion"], client, token_url)
                       if client.get("cert_pem") else "no certificate registered")
            if problem:
                return self.send_json(401, entra_error("invalid_client", 700027, "Client assertion failed: " + problem))
        elif form.get("client_secret") is None or not secret_ok:
            return self.send_json(401, entra_error("invalid_client", 7000215, "Invalid client secret provided."))
        with LOCK:
            out = issue(client.get("mailbox", ""), form, with_refresh=False)
        log("token: app-only token for %s" % client["client_id"])
        return self.send_json(200, out)


def main():
    global LOG, GRAPH_RESOURCE
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log")
    p.add_argument("--pidfile")
    p.add_argument("--graph-resource", default=GRAPH_RESOURCE)
    a = p.parse_args()
    LOG = a.log
    GRAPH_RESOURCE = a.graph_resource
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    if a.pidfile:
        with open(a.pidfile, "w") as f:
            f.write("%d\n" % os.getpid())
    srv.serve_forever()


if __name__ == "__main__":
    main()
