#!/usr/bin/env python3
"""Several mail transactions in one smtplib session, as a script that sends a batch would, with
foreign senders in between (each must be refused by the relay, whatever came before it).

usage: smtp_transactions.py PORT USER PASSWORD MAILBOX FOREIGN TO FILE1 FILE2
Prints one line per step: "<step> <code> <text>".
"""
import smtplib, sys


def main():
    port, user, password, mailbox, foreign, rcpt, first, second = sys.argv[1:9]
    s = smtplib.SMTP("127.0.0.1", int(port), timeout=60)
    s.ehlo("batch.client")
    s.login(user, password)

    def step(name, fn):
        try:
            code, text = fn()
        except smtplib.SMTPResponseException as e:
            code, text = e.smtp_code, e.smtp_error
        if isinstance(text, bytes):
            text = text.decode()
        print(name, code, text.splitlines()[0] if text else "")

    def send(sender, path):
        with open(path, "rb") as f:
            s.sendmail(sender, [rcpt], f.read())
        return 250, "sent"

    step("first", lambda: send(mailbox, first))
    step("foreign-after-data", lambda: s.mail(foreign))
    step("rset", s.rset)
    step("foreign-after-rset", lambda: s.mail(foreign))
    step("null", lambda: s.mail(""))
    step("rset", s.rset)
    step("foreign-after-null", lambda: s.mail(foreign))
    step("empty-route", lambda: s.docmd("MAIL FROM:<@:>"))
    step("second", lambda: send(mailbox, second))
    s.quit()


if __name__ == "__main__":
    main()
