//! Micro-benchmarks of the codecs on the login path: nanoseconds per command or reply.
//!
//!     cargo bench --bench codecs
//!
//! Criterion prints the time per iteration; nothing is asserted (the machines are shared).

use authrelay::codec::{imap, pop3, proxy, sasl, smtp};
use authrelay::secret::Secret;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn smtp_codecs(c: &mut Criterion) {
    c.bench_function("smtp parse_command MAIL FROM", |b| {
        b.iter(|| smtp::parse_command(black_box(b"MAIL FROM:<scanner@contoso.com> SIZE=1048576")))
    });
    c.bench_function("smtp parse_command AUTH PLAIN", |b| {
        b.iter(|| {
            smtp::parse_command(black_box(
                b"AUTH PLAIN AHNjYW5uZXJAY29udG9zby5jb20AcGFzc3dvcmQ=",
            ))
        })
    });
    let ehlo = b"250-BL1P221CA0016.outlook.office365.com Hello [127.0.0.1]\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n";
    c.bench_function("smtp next_reply (10-line EHLO)", |b| {
        b.iter(|| smtp::next_reply(black_box(ehlo)))
    });
    let (reply, _) = smtp::next_reply(ehlo).unwrap().unwrap();
    let policy = smtp::EhloPolicy {
        offer_auth: true,
        offer_starttls: false,
    };
    // A message streaming through after login: 64 KiB of 77-byte lines, as one read.
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n";
    let chunk: Vec<u8> = line.iter().copied().cycle().take(64 * 1024).collect();
    c.bench_function("smtp DATA scan, 64 KiB of 77-byte lines", |b| {
        b.iter(|| {
            let mut s = authrelay::codec::smtp_data::DataScanner::default();
            black_box(s.scan(black_box(&chunk)))
        })
    });
    c.bench_function("smtp rewrite_ehlo", |b| {
        b.iter(|| smtp::rewrite_ehlo(black_box(&reply), policy))
    });
}

fn imap_codecs(c: &mut Criterion) {
    let login = b"a1 LOGIN scanner@contoso.com \"pass word\"\r\n";
    c.bench_function("imap framer LOGIN line", |b| {
        b.iter(|| imap::Framer::new().scan(black_box(login), imap::MAX_PRE_AUTH_LITERAL))
    });
    c.bench_function("imap parse_command LOGIN", |b| {
        b.iter(|| imap::parse_command(black_box(&login[..login.len() - 2])))
    });
}

fn pop3_and_sasl(c: &mut Criterion) {
    c.bench_function("pop3 parse_command USER", |b| {
        b.iter(|| pop3::parse_command(black_box(b"USER scanner@contoso.com")))
    });
    c.bench_function("sasl decode + parse PLAIN", |b| {
        b.iter(|| {
            let raw = sasl::decode_base64(black_box(b"AHNjYW5uZXJAY29udG9zby5jb20AcGFzc3dvcmQ="))
                .unwrap();
            sasl::parse_plain(raw.expose())
        })
    });
    let token = Secret::new("eyJ0eXAiOiJKV1QiLCJub25jZSI6IjEyMyIsImFsZyI6IlJTMjU2In0.".repeat(20));
    c.bench_function("sasl XOAUTH2 blob (1.1 KB token)", |b| {
        b.iter(|| sasl::xoauth2_response(black_box("scanner@contoso.com"), &token))
    });
    let mut header = proxy::SIGNATURE.to_vec();
    header.extend_from_slice(&[
        0x21, 0x11, 0, 12, 192, 0, 2, 7, 127, 0, 0, 1, 0x9c, 0x40, 0x09, 0xdd,
    ]);
    c.bench_function("proxy v2 header", |b| {
        b.iter(|| proxy::parse(black_box(&header)))
    });
}

criterion_group!(benches, smtp_codecs, imap_codecs, pop3_and_sasl);
criterion_main!(benches);
