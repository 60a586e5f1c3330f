//! A tonic gRPC channel over a rustls connection built from one of [`crate::tls`]'s client
//! configs (pinned, or verifying against the CA with a client certificate). tonic's own
//! TLS settings cannot express a pinned CA or a hot-swapped client certificate, so the
//! channel dials TCP and handshakes itself, and tonic speaks HTTP/2 over the result.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Result, TrustError};

/// `host:port` of an endpoint written `https://host:port[/]`, `http://host:port` or
/// `host:port`.
pub fn authority(endpoint: &str) -> &str {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint);
    rest.split('/').next().unwrap_or(rest)
}

/// Dials `endpoint` (see [`authority`]), handshakes with `cfg` asking for `server_name`
/// (e.g. [`crate::id::COORDINATOR_DNS`] or [`crate::id::agent_dns`]), and returns a gRPC
/// channel. Every reconnection of the channel handshakes again, with the client
/// certificate current at that time.
pub async fn connect(
    endpoint: &str,
    server_name: &str,
    cfg: Arc<ClientConfig>,
    timeout: std::time::Duration,
) -> Result<Channel> {
    let per_call = timeout.max(std::time::Duration::from_secs(30));
    connect_with(endpoint, server_name, cfg, timeout, Some(per_call)).await
}

/// [`connect`] with each call bounded by `call_timeout`, or not at all (`None`: for
/// clients whose calls include long event streams, such as napalmctl's).
pub async fn connect_with(
    endpoint: &str,
    server_name: &str,
    cfg: Arc<ClientConfig>,
    timeout: std::time::Duration,
    call_timeout: Option<std::time::Duration>,
) -> Result<Channel> {
    let addr = authority(endpoint).to_owned();
    let err = |detail: String| TrustError::Connect {
        endpoint: endpoint.to_owned(),
        detail,
    };
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| err(format!("server name {server_name:?}: {e}")))?;
    let uri = format!("http://{addr}");
    let mut ep = Endpoint::from_shared(uri)
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(timeout);
    if let Some(t) = call_timeout {
        ep = ep.timeout(t);
    }
    let connector = tower::service_fn(move |_: http::Uri| {
        let (addr, name, cfg) = (addr.clone(), name.clone(), Arc::clone(&cfg));
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    ep.connect_with_connector(connector)
        .await
        .map_err(|e| err(error_chain(&e)))
}

/// An error with its sources, `a: b: c`, so a refused handshake says why.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

/// Decides, after a handshake, whether a peer may use the connection, from the chain it
/// presented (already verified against the CA by rustls; `None` when it presented none).
/// `Err` says why not, for the log.
pub type Admit = Arc<
    dyn Fn(Option<&[rustls_pki_types::CertificateDer<'static>]>) -> Result<(), String>
        + Send
        + Sync,
>;

/// An [`Admit`] letting in only peers whose certificate names a coordinator or an
/// operator: what an agent's listeners use, so that other agents (whose certificates
/// also chain to the CA) cannot drive it.
pub fn coordinator_or_operator() -> Admit {
    Arc::new(|chain| {
        let leaf = chain
            .and_then(|c| c.first())
            .ok_or_else(|| "no client certificate".to_owned())?;
        match crate::id::role_of(leaf) {
            Ok(Some(crate::id::Role::Coordinator | crate::id::Role::Operator(_))) => Ok(()),
            Ok(Some(crate::id::Role::Viewer(name))) => Err(format!(
                "operator {name} has the viewer role: it may read the coordinator, not drive \
                 an agent"
            )),
            Ok(Some(crate::id::Role::Agent(id))) => Err(format!(
                "agent {id} may not drive another agent (only coordinators and operators)"
            )),
            Ok(None) => Err("the client certificate names no napalm identity".into()),
            Err(e) => Err(e.to_string()),
        }
    })
}

/// Whether `stream`'s peer passes `admit` (always, without one); logs refusals.
pub fn admitted<IO>(
    admit: Option<&Admit>,
    stream: &tokio_rustls::server::TlsStream<IO>,
    peer: std::net::SocketAddr,
) -> bool {
    let Some(admit) = admit else { return true };
    match admit(stream.get_ref().1.peer_certificates()) {
        Ok(()) => true,
        Err(why) => {
            tracing::info!(%peer, reason = %why, "TLS peer refused after the handshake");
            false
        }
    }
}

/// TLS connections accepted on `listener` with `cfg`, as a stream a tonic server takes
/// (`serve_with_incoming`): each handshake runs in its own task, so a slow or failing
/// client delays nobody; failed handshakes (no or a foreign client certificate when one
/// is required) and peers `admit` refuses are logged and dropped. The accepting task ends
/// when the stream is dropped or `stop` flips.
pub fn incoming(
    listener: tokio::net::TcpListener,
    cfg: Arc<rustls::ServerConfig>,
    admit: Option<Admit>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<
    std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stop.wait_for(|s| *s) => break,
                _ = tx.closed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, tx, admit) = (acceptor.clone(), tx.clone(), admit.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(s) if admitted(admit.as_ref(), &s, peer) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Ok(mut s) => {
                        use tokio::io::AsyncWriteExt;
                        let _ = s.shutdown().await;
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    #[test]
    fn authorities_drop_scheme_and_path() {
        assert_eq!(super::authority("https://1.2.3.4:5/"), "1.2.3.4:5");
        assert_eq!(super::authority("http://h:1"), "h:1");
        assert_eq!(super::authority("h:1"), "h:1");
    }
}
