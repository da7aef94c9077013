//! `authrelay queue`: the spool from the command line (part of the binary, see main.rs). Works
//! whether or not the relay runs: it reads and changes the spool's files, which a running relay
//! reads again every ten seconds.

use authrelay::spool::{Envelope, Spool};
use std::process::ExitCode;

/// What to do with the queue.
#[derive(clap::Subcommand)]
pub enum QueueCommand {
    /// Every queued and failed message: ID, age, account, sender, recipients, attempts, last reply.
    List,
    /// One message: its envelope, delivery state and header section.
    Show {
        /// The queue ID (as in `250 … queued as ID`).
        id: String,
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
        QueueCommand::List => list(&spool),
        QueueCommand::Show { id } => show(&spool, &id),
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

fn age(envelope: &Envelope) -> String {
    let secs = authrelay::store::unix_now().saturating_sub(envelope.arrived);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

fn list(spool: &Spool) -> Result<(), authrelay::spool::SpoolError> {
    let queued = spool.queued()?;
    let failed = spool.failed()?;
    println!("{} queued, {} failed", queued.len(), failed.len());
    for (what, envelopes) in [("queued", queued), ("failed", failed)] {
        for e in envelopes {
            let state = spool.state(&e.id)?;
            println!(
                "{} {what} age={} account={} from=<{}> to={} attempts={} last={:?}",
                e.id,
                age(&e),
                e.account,
                e.sender,
                e.recipients.len(),
                state.attempts,
                state.last_reply
            );
        }
    }
    Ok(())
}

fn show(spool: &Spool, id: &str) -> Result<(), authrelay::spool::SpoolError> {
    let (e, header) = spool.show(id)?;
    let state = spool.state(id)?;
    println!("id: {}\naccount: {}\nfrom: <{}>", e.id, e.account, e.sender);
    for r in &e.recipients {
        println!("to: <{r}>");
    }
    println!(
        "client: {}\nage: {}\nattempts: {}\nnext try: {}\nlast reply: {}\n\n{header}",
        e.client,
        age(&e),
        state.attempts,
        state.next_try,
        state.last_reply
    );
    Ok(())
}

fn retry(spool: &Spool, id: &str) -> Result<(), authrelay::spool::SpoolError> {
    spool.retry_now(id)?;
    println!("{id} will be tried again now");
    Ok(())
}

fn flush(spool: &Spool) -> Result<(), authrelay::spool::SpoolError> {
    let queued = spool.queued()?;
    for e in &queued {
        spool.retry_now(&e.id)?;
    }
    println!("{} queued messages will be tried again now", queued.len());
    Ok(())
}
