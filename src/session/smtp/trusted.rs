//! Mail without a login from a listener's `trusted_networks` (README: Devices that cannot log
//! in). Each transaction's account is chosen by its envelope sender among the accounts whose
//! `networks` contain the client: the one whose mailbox or `allowed_from` is the sender, else
//! the one that rewrites senders from there (`check` refuses two of those for one network).
//! Everything else is refused with `550 5.7.60`, saying what to configure.

use crate::auth::accounts::Directory;
use crate::config::AccountConfig;
use crate::session::ListenerContext;
use std::net::IpAddr;
use std::sync::Arc;

const REPLY_THROTTLED: &str =
    "454 4.7.0 Too many refused messages or logins from this address, try again later\r\n";

/// The account a no-login transaction goes out as.
pub(super) struct Choice {
    pub account: Arc<AccountConfig>,
    /// The sender is not the account's: the message goes out as the mailbox.
    pub rewrite: bool,
}

/// The account of a no-login transaction from `client` with `sender`, or the reply that
/// refuses it (counted against the address by the throttle, as a failed login would be).
pub(super) fn account_for(
    ctx: &ListenerContext,
    client: IpAddr,
    sender: &str,
) -> Result<Choice, String> {
    let throttle = &ctx.shared.throttle;
    if throttle.address_over(client) {
        return Err(REPLY_THROTTLED.to_owned());
    }
    let chosen = choose(&ctx.shared.directory(), client, sender);
    if chosen.is_err() {
        let shown = crate::codec::line::sanitize_for_reply(sender, 200);
        tracing::warn!(%client, sender = %shown, "message without login refused: no account may send as this sender from this client");
        throttle.refused_without_login(client);
    }
    chosen
}

/// The refusal of one more recipient of no-login mail for `account` (with `pending` already
/// in the transaction) over its `max_recipients_per_hour`: temporary (RFC 5321 §4.2.5, 450
/// for a mailbox not available now), so the device tries again later.
pub(super) fn over_cap(
    ctx: &ListenerContext,
    account: &AccountConfig,
    pending: usize,
) -> Option<String> {
    let cap = account.max_recipients_per_hour?;
    let used = ctx.shared.quota.used(&account.id) + pending as u64;
    if used < u64::from(cap) {
        return None;
    }
    tracing::warn!(account = %account.id, cap, "recipient refused: the account's hourly cap for mail without a login is reached");
    Some(format!(
        "450 4.7.1 Account {} has reached its limit of {cap} recipients per hour for mail without a login; try again later\r\n",
        account.id
    ))
}

/// The account for a message from `client` with envelope sender `sender`, or the reply that
/// refuses it. Accounts are tried in name order, so the choice never depends on a hash map.
pub(super) fn choose(
    directory: &Directory,
    client: IpAddr,
    sender: &str,
) -> Result<Choice, String> {
    let mut candidates: Vec<&Arc<AccountConfig>> = directory
        .accounts()
        .filter(|a| a.networks.iter().any(|n| n.contains(client)))
        .collect();
    candidates.sort_by(|a, b| a.id.cmp(&b.id));
    let own = candidates
        .iter()
        .find(|a| a.mailbox.eq_ignore_ascii_case(sender))
        .or_else(|| candidates.iter().find(|a| a.may_send_as(sender)));
    if let Some(a) = own {
        return Ok(Choice {
            account: Arc::clone(a),
            rewrite: false,
        });
    }
    if let Some(a) = candidates.iter().find(|a| a.rewrite_sender) {
        return Ok(Choice {
            account: Arc::clone(a),
            rewrite: true,
        });
    }
    let shown = crate::codec::line::sanitize_for_reply(sender, 120);
    Err(if candidates.is_empty() {
        format!("550 5.7.60 Client {client} may not send without a login: it is in no account's networks; add it to an account's networks, or log in\r\n")
    } else {
        let names: Vec<&str> = candidates.iter().map(|a| a.id.as_str()).collect();
        let names = crate::codec::line::sanitize_for_reply(&names.join(", "), 100);
        format!("550 5.7.60 Sender <{shown}> is no mailbox or allowed_from of the accounts for client {client} ({names}); set it there, or rewrite_sender = true\r\n")
    })
}

/// The `X-Authrelay-Rewritten` trace field of a rewritten message.
pub(super) fn trace(sender: &str, client: IpAddr, account: &AccountConfig) -> String {
    format!(
        "sender <{sender}> sent as <{}> for client {client} (account {}, rewrite_sender)",
        account.mailbox, account.id
    )
}
