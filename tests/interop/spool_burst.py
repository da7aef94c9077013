"""Devices sending as fast as they can through a spool listener, for the kill -9 test.

Usage: spool_burst.py PORT USER PASSWORD FROM TO RUN_ID THREADS SECONDS

Each thread logs in and sends one message per session, with the subject RUN_ID-THREAD-N, until
SECONDS have passed; every message the relay accepted (250) is printed as `ACK subject`, at
once. Connection failures (the relay being killed and restarted) are retried after a pause.
"""
import smtplib
import sys
import threading
import time

port, user, password, sender, to, run_id = sys.argv[1:7]
threads, seconds = int(sys.argv[7]), float(sys.argv[8])
end = time.time() + seconds
lock = threading.Lock()


def worker(t):
    n = 0
    while time.time() < end:
        n += 1
        subject = f"{run_id}-{t}-{n}"
        try:
            s = smtplib.SMTP("127.0.0.1", int(port), timeout=10)
            s.login(user, password)
            s.sendmail(sender, [to], f"From: {sender}\r\nSubject: {subject}\r\n\r\nburst {subject}\r\n")
            with lock:
                print("ACK", subject, flush=True)
            try:
                s.quit()
            except Exception:
                pass
        except Exception:
            time.sleep(0.05)


ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
