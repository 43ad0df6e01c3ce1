//! Where a request comes from and the ids it goes by, settled once at the
//! door it came in by (the HTTP gateway or the gRPC port) into an [`Edge`]
//! that the services read; nothing further in looks at these headers.
//!
//! Behind a load balancer the TCP peer is the balancer. The client's
//! address is then what the proxies the operator trusts
//! (`--trusted-proxies`) say it is: from `Forwarded` (RFC 7239) or, without
//! one, `X-Forwarded-For`, the rightmost address that is not itself a
//! trusted proxy. Everything left of that was written by someone untrusted,
//! so it is never looked at; from any other peer the headers mean nothing.
//!
//! A client's own `x-request-id` is kept only when it is a short printable
//! token (it is written into the trail and logs); the server makes its own
//! id for every request as well, and the trail carries both.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    middleware::Next,
    response::Response,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use uuid::Uuid;

use crate::service::context::{CLIENT_ADDR, REQUEST_ID};

/// The server's own id of a request: in replies, and from a trusted
/// standalone gateway to the service.
pub const SERVER_REQUEST_ID: &str = "x-server-request-id";

/// The longest client-chosen request id kept.
pub const MAX_REQUEST_ID_CHARS: usize = 64;

/// A client-chosen request id worth keeping: 1 to 64 of `A-Z a-z 0-9 . _ : -`
/// (a UUID, a trace id, `req-42`); anything else is dropped, not cut.
pub fn valid_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_CHARS).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A `--trusted-proxies` entry: a CIDR network, or a bare address (a /32 or
/// a /128).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("not an IP address or CIDR network: {s:?}"))
}

/// The networks of the proxies whose word on the client's address is
/// believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[IpNet]>);

/// One hop a proxy reported: an address, or none it would or could tell
/// (`unknown`, an obfuscated name, something unreadable).
type Hop = Option<IpAddr>;

impl TrustedProxies {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self(nets.into_iter().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address of a request from `peer` carrying `headers`.
    /// A malformed header from a trusted proxy leaves the proxy's own
    /// address (or the last trusted hop's), never an error.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        match forwarded_hops(headers).or_else(|| x_forwarded_for_hops(headers)) {
            Some(hops) => self.walk(peer, &hops),
            None => peer,
        }
    }

    /// From the right: past every trusted hop to the first that is not. A
    /// hop that names no address stops the walk at the trusted one after it:
    /// what is left of it was written by someone nobody vouches for.
    fn walk(&self, peer: IpAddr, hops: &[Hop]) -> IpAddr {
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = hop.map(|ip| ip.to_canonical()) else { break };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

/// The `for=` of every element of every `Forwarded` header, left to right;
/// None when there is no such header.
fn forwarded_hops(headers: &HeaderMap) -> Option<Vec<Hop>> {
    let mut values = headers.get_all(http::header::FORWARDED).iter().peekable();
    values.peek()?;
    let mut hops = Vec::new();
    for value in values {
        let Ok(value) = value.to_str() else {
            hops.push(None);
            continue;
        };
        for element in rfc7239::parse(value) {
            hops.push(element.ok().and_then(|e| e.forwarded_for).and_then(|node| node.ip().copied()));
        }
    }
    Some(hops)
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The addresses of every `X-Forwarded-For` header, left to right (some
/// proxies add a port); None when there is no such header.
fn x_forwarded_for_hops(headers: &HeaderMap) -> Option<Vec<Hop>> {
    let mut values = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    values.peek()?;
    let mut hops = Vec::new();
    for value in values {
        let Ok(value) = value.to_str() else {
            hops.push(None);
            continue;
        };
        for entry in value.split(',').map(str::trim) {
            let ip = entry
                .parse::<IpAddr>()
                .ok()
                .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
                .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok());
            hops.push(ip);
        }
    }
    Some(hops)
}

/// What the door settled about a request.
#[derive(Debug, Clone)]
pub struct Edge {
    /// The client's address (as far as trusted proxies tell).
    pub client: Option<IpAddr>,
    /// The client's own request id, when it is one worth keeping.
    pub request_id: Option<String>,
    /// The server's id of the request.
    pub server_request_id: Uuid,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn client_request_id(headers: &HeaderMap) -> Option<String> {
    header(headers, REQUEST_ID).filter(|id| valid_request_id(id)).map(str::to_owned)
}

impl Edge {
    /// A request to the HTTP gateway.
    pub fn of_http(trusted: &TrustedProxies, peer: Option<IpAddr>, headers: &HeaderMap) -> Self {
        Self {
            client: peer.map(|peer| trusted.client_addr(peer, headers)),
            request_id: client_request_id(headers),
            server_request_id: Uuid::new_v4(),
        }
    }

    /// A call to the gRPC port. A trusted peer may be a standalone gateway,
    /// which forwards what it settled (`x-client-addr`, the server's id),
    /// or a proxy that speaks `Forwarded` / `X-Forwarded-For`.
    pub fn of_grpc(trusted: &TrustedProxies, peer: Option<IpAddr>, headers: &HeaderMap) -> Self {
        let from_trusted = peer.filter(|p| trusted.contains(*p));
        let client = match from_trusted {
            Some(peer) => Some(
                header(headers, CLIENT_ADDR)
                    .and_then(|a| a.trim().parse::<IpAddr>().ok())
                    .map(|ip| ip.to_canonical())
                    .unwrap_or_else(|| trusted.client_addr(peer, headers)),
            ),
            None => peer.map(|p| p.to_canonical()),
        };
        let server_request_id = from_trusted
            .and_then(|_| header(headers, SERVER_REQUEST_ID))
            .and_then(|id| Uuid::try_parse(id).ok())
            .unwrap_or_else(Uuid::new_v4);
        Self { client, request_id: client_request_id(headers), server_request_id }
    }

    /// The id a reply names the request by: the client's when it sent a
    /// good one (so it can find its own request), else the server's.
    pub fn reply_id(&self) -> String {
        self.request_id.clone().unwrap_or_else(|| self.server_request_id.to_string())
    }

    /// Names the request in a reply's headers: `x-request-id` (see
    /// [`Edge::reply_id`]) and `x-server-request-id`.
    pub fn stamp(&self, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.reply_id()) {
            headers.insert(REQUEST_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.server_request_id.to_string()) {
            headers.insert(SERVER_REQUEST_ID, v);
        }
    }
}

/// The gateway's middleware: settles the [`Edge`] of each request (a
/// request extension the handlers forward) and names the request in the
/// reply.
pub async fn http(State(trusted): State<TrustedProxies>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
    let edge = Edge::of_http(&trusted, peer, req.headers());
    req.extensions_mut().insert(edge.clone());
    let mut res = next.run(req).await;
    edge.stamp(res.headers_mut());
    res
}

/// The gRPC port's layer: settles the [`Edge`] of each call (a request
/// extension the services read) and names the call in the reply's
/// metadata.
#[derive(Clone, Default)]
pub struct GrpcEdgeLayer(pub TrustedProxies);

impl<S> tower::Layer<S> for GrpcEdgeLayer {
    type Service = GrpcEdge<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcEdge { inner, trusted: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct GrpcEdge<S> {
    inner: S,
    trusted: TrustedProxies,
}

/// The peer of a gRPC connection, plain or TLS.
fn grpc_peer<B>(req: &http::Request<B>) -> Option<IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .or_else(|| ext.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.get_ref().remote_addr()))
        .map(|a| a.ip())
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcEdge<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let edge = Edge::of_grpc(&self.trusted, grpc_peer(&req), req.headers());
        req.extensions_mut().insert(edge.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            edge.stamp(res.headers_mut());
            Ok(res)
        })
    }
}

/// The throttle's view of an address: an IPv6 client by its /64 (whoever
/// holds one address of a /64 usually holds them all), an IPv4-mapped one
/// as the IPv4 address it is.
pub fn throttle_scope(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, 64).map(|n| n.trunc().to_string()).unwrap_or_else(|_| v6.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| parse_net(n).unwrap()))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nets_and_bare_addresses() {
        assert_eq!(parse_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net(" 192.0.2.1 ").unwrap().to_string(), "192.0.2.1/32");
        assert_eq!(parse_net("2001:db8::1").unwrap().to_string(), "2001:db8::1/128");
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("proxy.internal").is_err());
        let t = trusted(&["10.0.0.0/8", "2001:db8::/32"]);
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("::ffff:10.1.2.3")), "an IPv4-mapped peer is its IPv4 address");
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(t.contains(ip("2001:db8:ffff::1")));
    }

    #[test]
    fn headers_from_an_untrusted_peer_mean_nothing() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("forwarded", "for=203.0.113.9"), ("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(t.client_addr(ip("198.51.100.7"), &h), ip("198.51.100.7"));
        assert_eq!(TrustedProxies::default().client_addr(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_address_across_every_header() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9"), ("x-forwarded-for", "10.0.0.5")]);
        assert_eq!(t.client_addr(ip("10.0.0.1"), &h), ip("203.0.113.9"), "the client cannot choose by prepending");
        let h = headers(&[("x-forwarded-for", "203.0.113.9:4711,[2001:db8::7]:443")]);
        assert_eq!(t.client_addr(ip("10.0.0.1"), &h), ip("2001:db8::7"));
        // Every hop trusted: the farthest one.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.5")]);
        assert_eq!(t.client_addr(ip("10.0.0.1"), &h), ip("10.9.9.9"));
    }

    #[test]
    fn forwarded_comes_first_with_quoted_ipv6_and_ports() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("forwarded", r#"for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711""#),
            ("Forwarded", "for=10.0.0.9"),
        ]);
        assert_eq!(t.client_addr(ip("10.0.0.1"), &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", "For=\"192.0.2.43:47011\"")]);
        assert_eq!(t.client_addr(ip("10.0.0.1"), &h), ip("192.0.2.43"));
    }

    #[test]
    fn unknown_obfuscated_and_malformed_hops_stop_at_the_proxy() {
        let t = trusted(&["10.0.0.0/8"]);
        for value in [
            "for=unknown",
            "for=_hidden",
            "for=1.2.3.4, for=_hidden",
            "for=1.2.3.4, proto=https",
            "for=not-an-address",
            "for=\"[2001:db8::1\"",
            "garbage",
            "",
        ] {
            let h = headers(&[("forwarded", value)]);
            assert_eq!(t.client_addr(ip("10.0.0.1"), &h), ip("10.0.0.1"), "{value:?}");
        }
        // Behind a trusted hop that names it, the walk stops at that hop.
        let h = headers(&[("forwarded", "for=203.0.113.9, for=unknown, for=10.0.0.7")]);
        assert_eq!(t.client_addr(ip("10.0.0.1"), &h), ip("10.0.0.7"));
        let h = headers(&[("x-forwarded-for", "203.0.113.9, bogus")]);
        assert_eq!(t.client_addr(ip("10.0.0.1"), &h), ip("10.0.0.1"));
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_bytes(b"203.0.113.9\xff").unwrap());
        assert_eq!(t.client_addr(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id("req-42"));
        assert!(valid_request_id("0af7651916cd43dd8448eb211c80319c:b7ad6b7169203331"));
        assert!(valid_request_id(&"a".repeat(64)));
        assert!(!valid_request_id(&"a".repeat(65)));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("two words"));
        assert!(!valid_request_id("new\nline"));
        assert!(!valid_request_id("ümlaut"));
        let h = headers(&[("x-request-id", "bad id")]);
        let edge = Edge::of_http(&TrustedProxies::default(), None, &h);
        assert_eq!(edge.request_id, None);
        assert_eq!(edge.reply_id(), edge.server_request_id.to_string());
    }

    #[test]
    fn grpc_forwarding_only_from_trusted_peers() {
        let t = trusted(&["127.0.0.1"]);
        let server = Uuid::new_v4().to_string();
        let h = headers(&[("x-client-addr", "203.0.113.9"), ("x-server-request-id", &server)]);
        let edge = Edge::of_grpc(&t, Some(ip("127.0.0.1")), &h);
        assert_eq!(edge.client, Some(ip("203.0.113.9")));
        assert_eq!(edge.server_request_id.to_string(), server);
        let edge = Edge::of_grpc(&t, Some(ip("127.0.0.2")), &h);
        assert_eq!(edge.client, Some(ip("127.0.0.2")));
        assert_ne!(edge.server_request_id.to_string(), server);
    }

    #[test]
    fn ipv6_clients_count_by_their_slash_64() {
        assert_eq!(throttle_scope(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(throttle_scope(ip("2001:db8:1:2:bbbb::9")), "2001:db8:1:2::/64");
        assert_eq!(throttle_scope(ip("2001:db8:1:3::1")), "2001:db8:1:3::/64");
        assert_eq!(throttle_scope(ip("::ffff:192.0.2.1")), "192.0.2.1");
        assert_eq!(throttle_scope(ip("192.0.2.1")), "192.0.2.1");
    }
}
