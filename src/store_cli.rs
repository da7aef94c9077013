//! `authrelay store`: the token store from the command line (part of the binary, see main.rs).
//! `migrate` copies every entry between the file (`[store] path`) and Redis (`[store] url`)
//! as it is stored, sealed: no token is opened, so neither the key file nor any local password
//! is needed, and the entries open afterwards with the same keys.

use authrelay::config::Config;
use authrelay::store::Store;
use std::process::ExitCode;

/// What to do with the store.
#[derive(clap::Subcommand)]
pub enum StoreCommand {
    /// Copy every entry from the file store to Redis (`--to redis`) or back (`--to file`).
    /// The configuration names both: `path` (the file) and `backend = "redis"` with its `url`.
    /// Entries already at the target are replaced by the source's; their generation goes up,
    /// so running relays take the copies at their next login.
    Migrate {
        /// Where the entries go.
        #[arg(long, value_enum)]
        to: Target,
    },
}

/// A store backend.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The file at `[store] path`.
    File,
    /// The Redis server of `[store] url`.
    Redis,
}

/// Runs `command` against `cfg`'s store.
pub fn run(cfg: &Config, command: StoreCommand) -> ExitCode {
    let StoreCommand::Migrate { to } = command;
    let Some(redis) = cfg.store.redis() else {
        eprintln!("error: store migrate needs [store] backend = \"redis\" and its url (the file is [store] path)");
        return ExitCode::FAILURE;
    };
    let file = Store::open(&cfg.store.path, cfg.store.key.as_ref());
    let shared = Store::open_with(&cfg.store.path, cfg.store.key.as_ref(), Some(redis));
    let (from, into) = match (file, shared) {
        (Ok(f), Ok(r)) => {
            if let Err(e) = r.probe().and_then(|()| r.reload_now()) {
                eprintln!("error: store: {e}");
                return ExitCode::FAILURE;
            }
            match to {
                Target::Redis => (f, r),
                Target::File => (r, f),
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match into.import(from.export()) {
        Ok(n) => {
            println!(
                "{n} account(s) copied from {} to {}",
                from.path().display(),
                into.path().display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
