"""Writes an email-oauth2-proxy (PyPI `emailproxy`) configuration for the load benchmark.

The account's token cache is pre-seeded in emailproxy's own format (PBKDF2-SHA256 with 1,200,000
iterations of the login password, Fernet), so logins use a cached access token and no browser
or token request is needed. Run with the venv's python (it needs `cryptography`, which emailproxy
installs).

    python emailproxy_config.py OUT USER PASSWORD ACCESS_TOKEN TOKEN_URL \
        SMTP_LOCAL_PORT SMTP_UPSTREAM_PORT IMAP_LOCAL_PORT IMAP_UPSTREAM_PORT
"""

import base64
import os
import sys
import time

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

ITERATIONS = 1_200_000


def main() -> None:
    (out, user, password, access_token, token_url,
     smtp_local, smtp_upstream, imap_local, imap_upstream) = sys.argv[1:10]
    salt = os.urandom(16)
    key = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt,
                     iterations=ITERATIONS).derive(password.encode("utf-8"))
    fernet = Fernet(base64.urlsafe_b64encode(key))
    sealed_access = fernet.encrypt(access_token.encode("utf-8")).decode("ascii")
    sealed_refresh = fernet.encrypt(b"bench-refresh-token").decode("ascii")
    with open(out, "w", encoding="utf-8") as f:
        f.write(f"""[emailproxy]
delete_account_token_on_password_error = False

[SMTP-{smtp_local}]
local_address = 127.0.0.1
server_address = 127.0.0.1
server_port = {smtp_upstream}

[IMAP-{imap_local}]
local_address = 127.0.0.1
server_address = 127.0.0.1
server_port = {imap_upstream}

[{user}]
permission_url = http://127.0.0.1:1/authorize
token_url = {token_url}
oauth2_scope = bench
redirect_uri = http://localhost
client_id = bench-client
client_secret = bench-secret
token_salt = {base64.b64encode(salt).decode("ascii")}
token_iterations = {ITERATIONS}
access_token = {sealed_access}
access_token_expiry = {int(time.time()) + 86_400}
refresh_token = {sealed_refresh}
last_activity = {int(time.time())}
""")


if __name__ == "__main__":
    main()
