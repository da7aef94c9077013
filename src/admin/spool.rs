//! The account page's spool actions: Retry and Delete, under the pages' rules (the server's
//! CSRF token and the account's local password, throttled like a mail login).

use super::{posted_account, refuse, unlock, Admin, AdminState};
use axum::extract::{ConnectInfo, Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use std::net::SocketAddr;

/// The account's messages in the spool, queued then failed.
pub(super) fn of_account(
    admin: &Admin,
    account: &str,
) -> Vec<(
    crate::spool::Envelope,
    crate::spool::DeliveryState,
    &'static str,
)> {
    let Some(handle) = admin.shared.spool.get() else {
        return Vec::new();
    };
    let spool = &handle.spool;
    let mut out = Vec::new();
    for (what, list) in [("queued", spool.queued()), ("failed", spool.failed())] {
        for e in list
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.account == account)
        {
            let state = spool.state(&e.id).unwrap_or_default();
            out.push((e, state, what));
        }
    }
    out
}

/// The spool form: the clicked button names the action and carries the queue ID.
#[derive(Deserialize)]
pub(super) struct SpoolForm {
    csrf: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    retry: Option<String>,
    #[serde(default)]
    delete: Option<String>,
}

/// Retries or deletes one of the account's messages.
pub(super) async fn act(
    State(admin): AdminState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    Form(form): Form<SpoolForm>,
) -> Response {
    let account = match posted_account(&admin, &name, &form.csrf) {
        Ok(a) => a,
        Err(refused) => return *refused,
    };
    let (id, delete) = match (form.retry, form.delete) {
        (Some(id), None) => (id, false),
        (None, Some(id)) => (id, true),
        _ => {
            return refuse(
                &admin,
                &account,
                "Choose Retry or Delete for one message.",
                StatusCode::BAD_REQUEST,
            )
        }
    };
    // Only this account's messages: a queue ID of another account is unknown here.
    let Some((envelope, _, _)) = of_account(&admin, &account.id)
        .into_iter()
        .find(|(e, _, _)| e.id == id)
    else {
        return refuse(
            &admin,
            &account,
            "No such message in this account's spool (delivered or deleted meanwhile?).",
            StatusCode::NOT_FOUND,
        );
    };
    if let Err(e) = unlock(&admin, &account, form.password, peer).await {
        return refuse(&admin, &account, e, StatusCode::FORBIDDEN);
    }
    let Some(handle) = admin.shared.spool.get() else {
        return refuse(
            &admin,
            &account,
            "No spool is configured.",
            StatusCode::NOT_FOUND,
        );
    };
    let spool = &handle.spool;
    let done = if delete {
        spool.delete(&id).map(|()| "deleted")
    } else {
        spool.retry_now(&id).map(|state| {
            // The running deliverer learns of it at once.
            spool.retried(envelope, state);
            spool.committed().notify_one();
            "retried"
        })
    };
    match done {
        Ok(what) => {
            tracing::info!(account = %account.id, queue_id = %id, peer = %peer.ip(), action = what, "account page: spool message {what}");
            Redirect::to(&format!("/account/{}?spool={what}", account.id)).into_response()
        }
        Err(e) => refuse(
            &admin,
            &account,
            &e.to_string(),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    }
}
