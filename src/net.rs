//! Connections on both ports, bounded: how many may be open at once, and
//! how long one may take to say what it wants. Slow clients (headers
//! trickled a byte at a time) and idle ones (connected, silent) are cut,
//! so that neither can hold the ports away from everyone else.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, extract::ConnectInfo, serve::Listener};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    task::JoinSet,
};
use tokio_stream::{Stream, StreamExt, wrappers::TcpListenerStream};
use tower::ServiceExt;

/// The bounds on the connections of one port.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// HTTP: a request's headers must be in this long after the connection
    /// opens or its last response went (an idle keep-alive connection closes
    /// then). gRPC: the connection preface must be in this long after
    /// connecting; later, HTTP/2 pings find dead peers.
    pub header_read_timeout: Duration,
    /// Open connections at most; more are closed as soon as accepted.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self { header_read_timeout: Duration::from_secs(10), max_connections: 4096 }
    }
}

impl From<&crate::config::LimitArgs> for ConnLimits {
    fn from(l: &crate::config::LimitArgs) -> Self {
        Self { header_read_timeout: l.header_read_timeout, max_connections: l.max_connections.max(1) }
    }
}

/// Slots for open connections; a connection past the cap is refused
/// (closed), counted, and logged at most once a second.
#[derive(Clone)]
struct Slots {
    free: Arc<Semaphore>,
    port: &'static str,
    last_warned: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Slots {
    fn new(max: usize, port: &'static str) -> Self {
        Self { free: Arc::new(Semaphore::new(max)), port, last_warned: Arc::default() }
    }

    fn take(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.free.clone().try_acquire_owned().ok();
        if permit.is_none() {
            metrics::counter!("usersvc_connections_refused_total", "port" => self.port).increment(1);
            if let Ok(mut last) = self.last_warned.lock()
                && last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                *last = Some(Instant::now());
                tracing::warn!(port = self.port, "connection limit reached: refusing connections");
            }
        }
        permit
    }
}

/// Serves the router over HTTP/1.1 on a listener (plain TCP, or the TLS
/// listener) until `shutdown` completes; then finishes the requests in
/// flight. Handlers see the client's address (`ConnectInfo<SocketAddr>`).
pub async fn serve_http<L>(
    mut listener: L,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let slots = Slots::new(limits.max_connections, "http");
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let Some(permit) = slots.take() else {
            drop(io);
            continue;
        };
        let service = router.clone().map_request(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
            let conn =
                builder.serve_connection(TokioIo::new(io), hyper_util::service::TowerToHyperService::new(service));
            tokio::pin!(conn);
            let mut draining = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        // No peer address: client addresses stay out of the
                        // logs at every level.
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended");
                        }
                        break;
                    }
                    _ = stopped.wait_for(|s| *s), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The gRPC port's connections: capped, each with its preface due in
/// `header_read_timeout`.
pub fn grpc_incoming(
    listener: TcpListener,
    limits: ConnLimits,
) -> impl Stream<Item = io::Result<BoundedConn>> + Send + 'static {
    let slots = Slots::new(limits.max_connections, "grpc");
    TcpListenerStream::new(listener).filter_map(move |accepted| match accepted {
        Ok(tcp) => {
            let permit = slots.take()?;
            let _ = tcp.set_nodelay(true);
            Some(Ok(BoundedConn {
                tcp,
                _permit: permit,
                preface: Some((PREFACE_BYTES, Box::pin(tokio::time::sleep(limits.header_read_timeout)))),
            }))
        }
        Err(e) => Some(Err(e)),
    })
}

/// The HTTP/2 connection preface ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").
const PREFACE_BYTES: usize = 24;

/// A gRPC connection holding its slot: reads fail (and the connection
/// ends) when the preface has not arrived in time.
pub struct BoundedConn {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Bytes of the preface still due, and by when.
    preface: Option<(usize, Pin<Box<tokio::time::Sleep>>)>,
}

impl AsyncRead for BoundedConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if let Some((due, deadline)) = &mut this.preface {
            match &polled {
                Poll::Ready(Ok(())) => {
                    let got = buf.filled().len() - before;
                    if got >= *due {
                        this.preface = None;
                    } else {
                        *due -= got;
                    }
                }
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no gRPC preface in time")));
                }
                _ => {}
            }
        }
        polled
    }
}

impl AsyncWrite for BoundedConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for BoundedConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}
