//! What a call brings besides its message: metadata and the peer, and the
//! trail record built from them.

use std::net::{IpAddr, SocketAddr};

use tonic::{Request, metadata::MetadataMap};
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::auth::Caller;

/// Metadata the gateway sets with the address of its own client.
pub const CLIENT_ADDR: &str = "x-client-addr";
pub const REQUEST_ID: &str = "x-request-id";

pub struct Ctx {
    pub md: MetadataMap,
    remote: Option<SocketAddr>,
}

impl Ctx {
    pub fn split<T>(request: Request<T>) -> (Ctx, T) {
        let remote = request.remote_addr();
        let (md, _, message) = request.into_parts();
        (Ctx { md, remote }, message)
    }

    pub fn request_id(&self) -> Option<String> {
        self.md.get(REQUEST_ID).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(128).collect())
    }

    /// The client's address. The gateway in this process (no peer) and the
    /// gateways the operator trusts forward their client's; anyone else is
    /// taken at the address they connect from, whatever they claim.
    pub fn client_ip(&self, trusted_gateways: &[IpAddr]) -> Option<IpAddr> {
        let forwarded = || self.md.get(CLIENT_ADDR).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
        match self.remote {
            None => forwarded(),
            Some(peer) if trusted_gateways.contains(&peer.ip()) => forwarded().or(Some(peer.ip())),
            Some(peer) => Some(peer.ip()),
        }
    }

    /// A trail record of this call by this caller: a user ("user" or
    /// "supervisor", with their id) or a service token ("service", with the
    /// token's id).
    pub fn record(&self, action: &str, caller: Option<&Caller>, app_id: Uuid) -> AuditRecord {
        let mut r = AuditRecord::new(action, Some(app_id));
        r.request_id = self.request_id();
        if let Some(user) = caller.and_then(|c| c.user) {
            r.actor = if user.is_service() {
                "service"
            } else if user.supervisor {
                "supervisor"
            } else {
                "user"
            }
            .into();
            r.actor_id = Some(user.user_id);
        }
        r
    }
}
