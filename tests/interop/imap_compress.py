#!/usr/bin/env python3
"""Logs in over plain IMAP, enables COMPRESS=DEFLATE (RFC 4978) and runs SELECT INBOX through
the compressed stream. Prints the decompressed SELECT response; exits 1 on failure.

usage: imap_compress.py PORT USER PASSWORD
"""
import socket, sys, zlib


def line(s):
    out = b""
    while not out.endswith(b"\r\n"):
        c = s.recv(1)
        if not c:
            raise SystemExit("ERR connection closed")
        out += c
    return out


def until(s, tag):
    while True:
        l = line(s)
        if l.startswith(tag + b" "):
            return l


port, user, password = sys.argv[1:4]
s = socket.create_connection(("127.0.0.1", int(port)), timeout=30)
line(s)
quoted = b'"' + password.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
s.sendall(b"a1 LOGIN " + user.encode() + b" " + quoted + b"\r\n")
ok = until(s, b"a1")
if b"COMPRESS=DEFLATE" not in ok:
    s.sendall(b"a2 CAPABILITY\r\n")
    caps = b""
    while True:
        l = line(s)
        caps += l
        if l.startswith(b"a2 "):
            break
    if b"COMPRESS=DEFLATE" not in caps:
        raise SystemExit("ERR upstream does not offer COMPRESS=DEFLATE: " + caps.decode())
s.sendall(b"a3 COMPRESS DEFLATE\r\n")
r = until(s, b"a3")
if not r.startswith(b"a3 OK"):
    raise SystemExit("ERR " + r.decode())
comp = zlib.compressobj(wbits=-15)
decomp = zlib.decompressobj(wbits=-15)
s.sendall(comp.compress(b"a4 SELECT INBOX\r\n") + comp.flush(zlib.Z_SYNC_FLUSH))
text = b""
while b"\r\na4 " not in b"\r\n" + text or not text.endswith(b"\r\n"):
    chunk = s.recv(4096)
    if not chunk:
        raise SystemExit("ERR closed while compressed: " + text.decode(errors="replace"))
    text += decomp.decompress(chunk)
sys.stdout.write(text.decode())
