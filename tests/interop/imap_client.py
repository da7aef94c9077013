#!/usr/bin/env python3
"""IMAP with Python's imaplib, the way a legacy script would.

usage: imap_client.py PORT MODE LOGIN USER PASSWORD CAFILE ACTION [FILE]
  MODE: plain | starttls | implicit     LOGIN: login (LOGIN command) | plain (AUTHENTICATE PLAIN)
  ACTION: count | fetch1 (prints message 1 as hex) | append FILE
Prints the result and exits 0, or prints "ERR <server text>" and exits 1.
"""
import imaplib, ssl, sys


def main():
    port, mode, how, user, password, cafile, action = sys.argv[1:8]
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        if mode == "implicit":
            m = imaplib.IMAP4_SSL("localhost", int(port), ssl_context=ctx, timeout=120)
        else:
            m = imaplib.IMAP4("localhost", int(port), timeout=120)
            if mode == "starttls":
                m.starttls(ssl_context=ctx)
        if how == "plain":
            m.authenticate("PLAIN", lambda _: ("\0%s\0%s" % (user, password)).encode())
        else:
            m.login(user, password)
        if action == "append":
            with open(sys.argv[8], "rb") as f:
                data = f.read()
            typ, _ = m.append("INBOX", None, None, data)
            print("APPEND " + typ)
        else:
            typ, data = m.select("INBOX")
            if action == "count":
                print("COUNT " + data[0].decode())
            elif action == "fetch1":
                typ, data = m.fetch("1", "(BODY.PEEK[])")
                print(data[0][1].hex())
        m.logout()
    except imaplib.IMAP4.error as e:
        arg = e.args[0] if e.args else ""
        print("ERR " + (arg.decode() if isinstance(arg, bytes) else str(arg)))
        sys.exit(1)


if __name__ == "__main__":
    main()
