//! Every DNS request, over UDP or TCP: the appliance's rules, then hickory's `Catalog` (the lab's
//! zones, and the forwarders at the root when there are any).

use std::net::IpAddr;
use std::sync::Arc;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, OpCode, ResponseCode};
use hickory_server::proto::rr::{LowerName, Name, RecordType};
use hickory_server::resolver::config::NameServerConfig;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder, ZoneHandler};

use super::{DnsError, Inner, Stats};

pub(crate) struct Handler {
    catalog: Catalog,
    pub(crate) inner: Arc<Inner>,
}

impl Handler {
    pub(crate) fn new(inner: Arc<Inner>) -> Result<Handler, DnsError> {
        let mut catalog = Catalog::new();
        for z in &inner.zones {
            let h: Arc<dyn ZoneHandler> = z.clone();
            catalog.upsert(z.origin().clone(), vec![h]);
        }
        if !inner.settings.forwarders.is_empty() {
            let name_servers = inner
                .settings
                .forwarders
                .iter()
                .map(|a| {
                    let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                    for c in &mut ns.connections {
                        c.port = a.port();
                    }
                    ns
                })
                .collect();
            let forward = ForwardZoneHandler::builder_tokio(ForwardConfig {
                name_servers,
                options: None,
            })
            .build()
            .map_err(DnsError::Setting)?;
            catalog.upsert(LowerName::from(Name::root()), vec![Arc::new(forward)]);
        }
        Ok(Handler { catalog, inner })
    }

    /// Whether `name` is in one of the appliance's zones.
    pub(crate) fn ours(&self, name: &LowerName) -> bool {
        self.inner.zone_of(name).is_some()
    }

    /// Recursion is for the lab's clients only: an open resolver is an amplifier.
    fn may_recurse(&self, ip: IpAddr) -> bool {
        let IpAddr::V4(ip) = ip else {
            return false;
        };
        ip.is_loopback()
            || self.inner.settings.recursion_from.iter().any(|(net, p)| {
                let mask = u32::MAX.checked_shl(32 - u32::from(*p)).unwrap_or(0);
                u32::from(ip) & mask == u32::from(*net) & mask
            })
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let stats = &self.inner.stats;
        Stats::add(&stats.queries);
        if request.metadata.op_code == OpCode::Query {
            if let Ok(info) = request.request_info() {
                let q = info.query;
                if q.query_type() == RecordType::IXFR {
                    // No journal of differences is kept: NOTIMP makes secondaries use AXFR.
                    return refuse(request, ResponseCode::NotImp, response_handle).await;
                }
                if !self.ours(q.name()) && q.query_type() != RecordType::AXFR {
                    if !self.may_recurse(request.src().ip()) {
                        Stats::add(&stats.refused_recursion);
                        return refuse(request, ResponseCode::Refused, response_handle).await;
                    }
                    Stats::add(&stats.forwarded);
                }
            }
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

async fn refuse<R: ResponseHandler>(
    request: &Request,
    code: ResponseCode,
    mut response_handle: R,
) -> ResponseInfo {
    let edns = request.edns.as_ref().map(|e| {
        let mut ours = Edns::new();
        ours.set_max_payload(e.max_payload().max(512));
        ours
    });
    let response = MessageResponseBuilder::new(&request.queries, edns.as_ref())
        .error_msg(&request.metadata, code);
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!("DNS: could not send an error response: {e}");
            let mut h = request.metadata;
            h.response_code = ResponseCode::ServFail;
            ResponseInfo::from(hickory_server::proto::op::Header {
                metadata: h,
                counts: Default::default(),
            })
        }
    }
}

/// The handler as hickory's TCP server holds it (shared with the UDP fast path).
pub(crate) struct Shared(pub(crate) Arc<Handler>);

#[async_trait::async_trait]
impl RequestHandler for Shared {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}
