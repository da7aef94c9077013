#!/usr/bin/env python3
"""POP3 with Python's poplib, the way a legacy script would.

usage: pop3_client.py PORT MODE LOGIN USER PASSWORD CAFILE ACTION
  MODE: plain | stls | implicit      LOGIN: userpass | plain (AUTH PLAIN)
  ACTION: stat | retr1 (prints message 1 as hex on one line) | dele-all
Prints the result and exits 0, or prints "ERR <server text>" and exits 1.
"""
import base64, poplib, ssl, sys


def main():
    port, mode, how, user, password, cafile, action = sys.argv[1:8]
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        if mode == "implicit":
            p = poplib.POP3_SSL("localhost", int(port), context=ctx, timeout=120)
        else:
            p = poplib.POP3("localhost", int(port), timeout=120)
            if mode == "stls":
                p.stls(context=ctx)
        if how == "plain":
            blob = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
            p._shortcmd("AUTH PLAIN " + blob)
        else:
            p.user(user)
            p.pass_(password)
        if action == "stat":
            print("STAT %d %d" % p.stat())
        elif action == "retr1":
            _, lines, _ = p.retr(1)
            print((b"\r\n".join(lines) + b"\r\n").hex())
        elif action == "dele-all":
            count, _ = p.stat()
            for i in range(1, count + 1):
                p.dele(i)
            print("DELETED %d" % count)
        p.quit()
    except poplib.error_proto as e:
        arg = e.args[0]
        print("ERR " + (arg.decode() if isinstance(arg, bytes) else str(arg)))
        sys.exit(1)


if __name__ == "__main__":
    main()
