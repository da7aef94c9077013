//! The floor any proxy pays: a TLS-terminating byte relay with no protocol knowledge. The client
//! speaks plaintext SMTP or IMAP to it, including XOAUTH2; it opens TLS to the upstream and
//! copies bytes both ways with the same buffer sizes as authrelay's pipe.

use crate::upstream::accept_loop;
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::path::Path;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

const BUFFER: usize = 32 * 1024;

/// Relays each `(listen, upstream)` pair until killed.
pub async fn run(ca: &Path, pairs: Vec<(SocketAddr, SocketAddr)>) -> std::io::Result<()> {
    let connector = TlsConnector::from(
        authrelay::net::tls::client_config(Some(ca)).map_err(std::io::Error::other)?,
    );
    let mut listeners = Vec::new();
    for (listen, upstream) in pairs {
        listeners.push((TcpListener::bind(listen).await?, upstream));
    }
    println!("ready");
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, upstream) in listeners {
        let connector = connector.clone();
        tasks.spawn(accept_loop(listener, move |client| {
            let connector = connector.clone();
            async move {
                let _ = relay(client, upstream, connector).await;
            }
        }));
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    connector: TlsConnector,
) -> std::io::Result<()> {
    let tcp = TcpStream::connect(upstream).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("a valid name");
    let mut tls = connector.connect(name, tcp).await?;
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut tls, BUFFER, BUFFER).await?;
    Ok(())
}
