#!/usr/bin/env python3
"""Sends one message with Python's smtplib, the way a legacy script would.

usage: smtp_client.py PORT MODE MECH USER PASSWORD FROM TO FILE [CAFILE]
  MODE: plain | starttls | implicit     MECH: PLAIN | LOGIN
Prints "OK" and exits 0, or prints "ERR <code> <text>" and exits 1.
"""
import smtplib, ssl, sys


def main():
    port, mode, mech, user, password, sender, rcpt, path = sys.argv[1:9]
    cafile = sys.argv[9] if len(sys.argv) > 9 else None
    ctx = ssl.create_default_context(cafile=cafile) if cafile else None
    with open(path, "rb") as f:
        msg = f.read()
    try:
        if mode == "implicit":
            s = smtplib.SMTP_SSL("localhost", int(port), context=ctx, timeout=120)
        else:
            s = smtplib.SMTP("127.0.0.1", int(port), timeout=120)
        s.ehlo("legacy.client")
        if mode == "starttls":
            s._host = "localhost"
            s.starttls(context=ctx)
            s.ehlo("legacy.client")
        s.user, s.password = user, password
        if mech == "LOGIN":
            s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        else:
            s.auth("PLAIN", s.auth_plain)
        s.sendmail(sender, [rcpt], msg)
        s.quit()
    except smtplib.SMTPResponseException as e:
        text = e.smtp_error.decode() if isinstance(e.smtp_error, bytes) else str(e.smtp_error)
        print("ERR %d %s" % (e.smtp_code, text))
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
