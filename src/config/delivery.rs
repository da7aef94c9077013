//! How the spool sends an account's messages: SMTP or Microsoft Graph.

/// How the spool delivers an account's messages (`send = "smtp" | "graph"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Sending {
    /// SMTP to the account's upstream, XOAUTH2 or an app password.
    #[default]
    Smtp,
    /// Microsoft Graph `sendMail` (needs no SMTP AUTH on the mailbox).
    Graph(GraphConfig),
}

/// Where and with which token the spool reaches Microsoft Graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphConfig {
    /// The Graph endpoint without a trailing slash (`https://graph.microsoft.com`; national
    /// clouds have their own). It is also the resource its tokens are requested for.
    pub url: String,
    /// The scopes of Graph token requests: `{url}/Mail.Send offline_access` (delegated) or
    /// `{url}/.default` (client credentials) unless configured.
    pub scopes: Vec<String>,
    /// The largest request body sent (`graph_max_mb`, 4 by default: Graph refuses larger MIME
    /// sends with 413 per reports on Microsoft Q&A; the sendMail page states no limit).
    /// Larger messages fail at once with a reply naming the limit and SMTP.
    pub max_request_bytes: usize,
    /// How long one Graph request may take (`graph_timeout_secs`, 120 by default) before its
    /// outcome counts as unknown; an unanswered send is looked up in Sent Items after it.
    pub request_timeout: std::time::Duration,
}

/// Microsoft Graph's global endpoint (learn.microsoft.com/graph/deployments lists the national
/// clouds' own).
pub const GRAPH_URL: &str = "https://graph.microsoft.com";
