//! Messages the relay writes itself: delivery-status notifications and alert mails. They go
//! through the spool like any device's message (durable, paced, retried), from the account's
//! mailbox to one recipient, and are never bounced: a failing notification must not make mail
//! about itself.

use super::{new_id, Envelope, Spool, SpoolError};

impl Envelope {
    /// The envelope of a message the relay made, sent by `account` from `mailbox` to `to`;
    /// `client` names the maker in place of a device's address.
    pub fn own(account: &str, mailbox: &str, to: &str, client: &str) -> Envelope {
        Envelope {
            id: new_id(),
            account: account.to_owned(),
            sender: mailbox.to_owned(),
            recipients: vec![to.to_owned()],
            arrived: crate::store::unix_now(),
            client: client.to_owned(),
            bounce: true,
        }
    }
}

impl Spool {
    /// Stores a whole message at once, durably, under `envelope` (queued when this returns).
    pub async fn store(&self, envelope: &Envelope, message: &[u8]) -> Result<(), SpoolError> {
        let mut m = self.begin(envelope).await?;
        m.write(message).await?;
        m.commit().await
    }
}
