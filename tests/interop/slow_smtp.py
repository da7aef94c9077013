#!/usr/bin/env python3
"""Sends one large message slowly over raw SMTP (AUTH PLAIN), to test what a shutdown does to it.

usage: slow_smtp.py PORT USER PASSWORD FROM TO MARKER MEGABYTES SECONDS
Prints "START" once DATA is flowing, then "OK <final reply>" if the server answered 250 after the
final dot, else "ERR <what happened>" (a 4xx/5xx reply, or the connection closed under it).
"""
import base64, socket, sys, time


def main():
    port, user, password, sender, rcpt, marker, mb, secs = sys.argv[1:9]
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=120)
    f = s.makefile("rb")

    def reply():
        while True:
            line = f.readline()
            if not line:
                raise EOFError("connection closed")
            if len(line) < 4 or line[3:4] != b"-":
                return line.decode(errors="replace").rstrip()

    def command(c):
        s.sendall(c.encode() + b"\r\n")
        return reply()

    try:
        reply()
        command("EHLO slow.client")
        auth = base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()
        for c, want in (("AUTH PLAIN " + auth, "235"), ("MAIL FROM:<%s>" % sender, "250"),
                        ("RCPT TO:<%s>" % rcpt, "250"), ("DATA", "354")):
            r = command(c)
            if not r.startswith(want):
                print("ERR " + r)
                return
        s.sendall(("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\n" % (sender, rcpt, marker)).encode())
        chunk = (b"x" * 998 + b"\r\n") * 256
        n = max(int(float(mb) * 1024 * 1024) // len(chunk), 1)
        print("START", flush=True)
        for _ in range(n):
            s.sendall(chunk)
            time.sleep(float(secs) / n)
        s.sendall(b".\r\n")
        r = reply()
        print(("OK " if r.startswith("250") else "ERR ") + r)
    except (OSError, EOFError) as e:
        print("ERR %s: %s" % (type(e).__name__, e))


if __name__ == "__main__":
    main()
