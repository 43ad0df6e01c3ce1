//! What a call brings besides its message: metadata and the peer, and the
//! trail record built from them.

use std::net::IpAddr;

use tonic::{Request, metadata::MetadataMap};
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::auth::Caller;
use crate::edge::{Edge, TrustedProxies};

/// Metadata the gateway sets with the address of its own client.
pub const CLIENT_ADDR: &str = "x-client-addr";
pub const REQUEST_ID: &str = "x-request-id";

pub struct Ctx {
    pub md: MetadataMap,
    edge: Edge,
}

impl Ctx {
    /// The call's metadata and message, and its [`Edge`]: settled by the
    /// door it came in by (the gRPC port's layer, or the gateway of this
    /// process); a call that came by neither is taken at its peer's address.
    pub fn split<T>(request: Request<T>) -> (Ctx, T) {
        let remote = request.remote_addr();
        let (md, extensions, message) = request.into_parts();
        let edge = match extensions.get::<Edge>() {
            Some(edge) => edge.clone(),
            None => Edge::of_grpc(&TrustedProxies::default(), remote.map(|r| r.ip()), md.as_ref()),
        };
        (Ctx { md, edge }, message)
    }

    /// The id the reply names the call by (the client's, when it chose a
    /// good one).
    pub fn request_id(&self) -> String {
        self.edge.reply_id()
    }

    /// The client's address, as far as trusted proxies tell.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.edge.client
    }

    /// A trail record of this call by this caller: a user ("user" or
    /// "supervisor", with their id) or a service token ("service", with the
    /// token's id).
    pub fn record(&self, action: &str, caller: Option<&Caller>, app_id: Uuid) -> AuditRecord {
        let mut r = AuditRecord::new(action, Some(app_id));
        r.request_id = Some(self.request_id());
        r.server_request_id = Some(self.edge.server_request_id);
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
