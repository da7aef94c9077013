"""Which TLS versions and cipher suites a listener accepts, as nmap's ssl-enum-ciphers would
list them: one handshake per (version, suite) pair the local OpenSSL can offer, printing
"VERSION SUITE" for each the server took. Usage: tls_enumerate.py PORT"""
import socket
import warnings
import ssl
import sys

warnings.simplefilter("ignore", DeprecationWarning)
port = int(sys.argv[1])
versions = [
    ("TLSv1", ssl.TLSVersion.TLSv1),
    ("TLSv1.1", ssl.TLSVersion.TLSv1_1),
    ("TLSv1.2", ssl.TLSVersion.TLSv1_2),
]
probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
probe.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
suites = [c["name"] for c in probe.get_ciphers() if c["protocol"] != "TLSv1.3"]


def accepted(version, suite):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = version
    ctx.maximum_version = version
    try:
        ctx.set_ciphers(suite + ":@SECLEVEL=0")
    except ssl.SSLError:
        return False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                return True
    except (ssl.SSLError, OSError):
        return False


for name, version in versions:
    for suite in suites:
        if accepted(version, suite):
            print(name, suite, flush=True)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        print("TLSv1.3", s.cipher()[0])
