"""Shares of a folded-stack profile (inferno-collapse-perf output) by where the time goes, as
summarized in BENCHMARKS.md: python3 benches/profile_summary.py STACKS.folded"""
import sys

CATEGORIES = [
    # (name, test on the frames from the root to the sampled one)
    ("socket reads (recv, with the window updates they send)",
     lambda s: any(f in ("__libc_recv", "__x64_sys_recvfrom", "__x64_sys_read") for f in s)),
    ("socket writes (send/writev, with the loopback delivery to the peer)",
     lambda s: any(f in ("__send", "__GI___writev", "__x64_sys_sendto", "__x64_sys_writev",
                         "__x64_sys_write") for f in s)),
    ("waiting and waking (epoll_wait, scheduler)",
     lambda s: any("epoll_wait" in f or f == "schedule" for f in s)),
    ("AES-GCM", lambda s: "aes_gcm" in s[-1] or "gcm_ghash" in s[-1]),
    ("user-space memmove/memcpy", lambda s: "memmove" in s[-1] or "memcpy" in s[-1]),
    ("SMTP DATA scan", lambda s: "DataScanner" in s[-1] or "memchr" in s[-1]),
]


def main(path):
    rows = []
    for line in open(path):
        stack, n = line.rsplit(" ", 1)
        rows.append((stack.split(";"), int(n)))
    total = sum(n for _, n in rows)
    seen = set()
    for name, test in CATEGORIES:
        hit = [i for i, (s, _) in enumerate(rows) if i not in seen and test(s)]
        seen.update(hit)
        share = 100 * sum(rows[i][1] for i in hit) / total
        print(f"{share:5.1f}%  {name}")
    rest = 100 * sum(n for i, (_, n) in enumerate(rows) if i not in seen) / total
    print(f"{rest:5.1f}%  everything else")


if __name__ == "__main__":
    main(sys.argv[1])
