//! `authrelay queue`: the spool from the command line (part of the binary, see main.rs). Works
//! whether or not the relay runs: it reads and changes the spool's files, which a running relay
//! reads again every ten seconds.

use authrelay::civil::{relative, rfc3339, unix};
use authrelay::spool::{DeliveryState, Envelope, Spool, SpoolError};
use authrelay::store::unix_now;
use std::process::ExitCode;

/// What to do with the queue.
#[derive(clap::Subcommand)]
pub enum QueueCommand {
    /// Every queued and failed message: ID, age, account, sender, recipients, attempts, next
    /// try, last reply.
    List {
        /// One JSON object per line, times in RFC 3339 (UTC), for scripts and monitoring.
        #[arg(long)]
        json: bool,
    },
    /// One message: its envelope, delivery state and header section.
    Show {
        /// The queue ID (as in `250 … queued as ID`).
        id: String,
        /// A JSON object (with the header section as `header`), times in RFC 3339 (UTC).
        #[arg(long)]
        json: bool,
    },
    /// Try a message again now (a failed one goes back into the queue).
    Retry {
        /// The queue ID.
        id: String,
    },
    /// Remove a message for good.
    Delete {
        /// The queue ID.
        id: String,
    },
    /// Try every queued message again now.
    Flush,
}

/// Runs `authrelay queue …` against the configuration's `[spool] path`.
pub fn run(config: &authrelay::config::Config, command: QueueCommand) -> ExitCode {
    let spool = match Spool::inspect(&config.spool.path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        QueueCommand::List { json } => list(&spool, json),
        QueueCommand::Show { id, json } => show(&spool, &id, json),
        QueueCommand::Retry { id } => retry(&spool, &id),
        QueueCommand::Delete { id } => spool.delete(&id).map(|()| println!("{id} deleted")),
        QueueCommand::Flush => flush(&spool),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// A message as `--json` prints it: the envelope, where it is, and its delivery state.
fn json(
    e: &Envelope,
    state: &DeliveryState,
    what: &str,
    header: Option<&str>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": e.id,
        "state": what,
        "account": e.account,
        "from": e.sender,
        "to": e.recipients,
        "client": e.client,
        "arrived": rfc3339(unix(e.arrived)),
        "attempts": state.attempts,
        "next_try": rfc3339(unix(state.next_try)),
        "last_reply": state.last_reply,
        "outcome_unknown": state.unsure,
        "notification": e.bounce,
    });
    if let Some(h) = header {
        v["header"] = h.into();
    }
    v
}

/// When the next attempt comes, as a person reads it (`in 28 s`); failed messages get none.
fn next_try(state: &DeliveryState, what: &str, now: u64) -> String {
    match what {
        "failed" => "never (failed)".to_owned(),
        _ if state.next_try <= now => "now".to_owned(),
        _ => relative(state.next_try, now),
    }
}

fn list(spool: &Spool, as_json: bool) -> Result<(), SpoolError> {
    let queued = spool.queued()?;
    let failed = spool.failed()?;
    if !as_json {
        println!("{} queued, {} failed", queued.len(), failed.len());
    }
    let now = unix_now();
    for (what, envelopes) in [("queued", queued), ("failed", failed)] {
        for e in envelopes {
            let state = spool.state(&e.id)?;
            if as_json {
                println!("{}", json(&e, &state, what, None));
                continue;
            }
            println!(
                "{} {what} arrived {} account={} from=<{}> to={} attempts={} next try {} last={:?}",
                e.id,
                relative(e.arrived, now),
                printable(&e.account),
                printable(&e.sender),
                e.recipients.len(),
                state.attempts,
                next_try(&state, what, now),
                state.last_reply
            );
        }
    }
    Ok(())
}

fn show(spool: &Spool, id: &str, as_json: bool) -> Result<(), SpoolError> {
    let (e, header) = spool.show(id)?;
    let state = spool.state(id)?;
    let what = match spool.failed()?.iter().any(|f| f.id == e.id) {
        true => "failed",
        false => "queued",
    };
    if as_json {
        println!("{}", json(&e, &state, what, Some(&header)));
        return Ok(());
    }
    print!("{}", show_text(&e, &state, what, &header, unix_now()));
    Ok(())
}

/// `queue show` as text. Everything in it came from a device or a server: control characters
/// (a terminal's escape sequences in a Subject, a CR that rewrites the line) are shown as `?`,
/// so what the operator's terminal does is never the device's to decide.
fn show_text(e: &Envelope, state: &DeliveryState, what: &str, header: &str, now: u64) -> String {
    let mut out = format!(
        "id: {}\nstate: {what}\naccount: {}\nfrom: <{}>\n",
        e.id,
        printable(&e.account),
        printable(&e.sender)
    );
    for r in &e.recipients {
        out.push_str(&format!("to: <{}>\n", printable(r)));
    }
    out.push_str(&format!(
        "client: {}\narrived: {} ({})\nattempts: {}\nnext try: {}\nlast reply: {}\n\n",
        printable(&e.client),
        relative(e.arrived, now),
        rfc3339(unix(e.arrived)),
        state.attempts,
        next_try(state, what, now),
        printable(&state.last_reply)
    ));
    for line in header.lines() {
        // A folded header line keeps its leading tab.
        let (indent, rest) = match line.strip_prefix('\t') {
            Some(rest) => ("\t", rest),
            None => ("", line),
        };
        out.push_str(indent);
        out.push_str(&printable(rest));
        out.push('\n');
    }
    out
}

fn printable(text: &str) -> String {
    authrelay::codec::line::sanitize_for_reply(text, usize::MAX)
}

fn retry(spool: &Spool, id: &str) -> Result<(), SpoolError> {
    spool.retry_now(id)?;
    println!("{id} will be tried again now");
    Ok(())
}

fn flush(spool: &Spool) -> Result<(), SpoolError> {
    let queued = spool.queued()?;
    for e in &queued {
        spool.retry_now(&e.id)?;
    }
    println!("{} queued messages will be tried again now", queued.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 26, finding 17: a device's Subject with terminal escape codes reached the
    /// operator's terminal through `queue show`.
    #[test]
    fn show_never_prints_a_control_character() {
        let e = Envelope {
            id: "0001-ab".into(),
            account: "scanner".into(),
            sender: "a@b.example".into(),
            recipients: vec!["c@d.example".into()],
            arrived: 0,
            client: "127.0.0.1".into(),
            bounce: false,
        };
        let state = DeliveryState {
            last_reply: "550 no\u{1b}[2J".into(),
            ..Default::default()
        };
        let header = "Subject: \u{1b}]0;owned\u{7}\u{1b}[31mred\r\nX-Long: one\r\n\ttwo\r\n";
        let text = show_text(&e, &state, "queued", header, 10);
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{text:?}"
        );
        assert!(
            text.contains("Subject: ?]0;owned??[31mred\nX-Long: one\n\ttwo\n"),
            "{text:?}"
        );
        assert!(text.contains("last reply: 550 no?[2J\n"), "{text:?}");
    }
}
