//! One of the appliance's zones as hickory-server sees it: hickory's in-memory zone (lookups,
//! negative answers, AXFR) that the view patches, with the appliance's rules for transfers and
//! updates around it.

use std::sync::{Arc, Weak};

use hickory_server::dnssec::NxProofKind;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{NS, SOA};
use hickory_server::proto::rr::{
    LowerName, Name, RData, Record, RecordSet, RecordType, RrKey, TSigResponseContext,
};
use hickory_server::server::{Request, RequestInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, LookupControlFlow, LookupError, LookupOptions, Nsec3QueryInfo,
    ZoneHandler, ZoneTransfer, ZoneType,
};

use super::view::View;
use super::{Inner, Listed, Stats};

pub(crate) struct LabZone {
    zone: InMemoryZoneHandler<TokioRuntimeProvider>,
    soa: std::sync::Mutex<SOA>,
    ttl: u32,
    inner: Weak<Inner>,
}

impl LabZone {
    pub(crate) fn new(
        origin: Name,
        ns: Name,
        rname: Name,
        ttl: u32,
        serial: u32,
        inner: Weak<Inner>,
    ) -> LabZone {
        // Refresh, retry and expire as RFC 1912 suggests; the negative TTL is the records' own
        // low TTL, so that a name that appears is seen soon.
        let soa = SOA::new(ns.clone(), rname, serial, 3600, 600, 604_800, ttl);
        let mut zone = InMemoryZoneHandler::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::AllowAll,
            None,
        );
        let records = zone.records_get_mut();
        let mut ns_set = RecordSet::with_ttl(origin.clone(), RecordType::NS, 3600);
        ns_set.insert(
            Record::from_rdata(origin.clone(), 3600, RData::NS(NS(ns))),
            0,
        );
        records.insert(
            RrKey::new(LowerName::new(&origin), RecordType::NS),
            Arc::new(ns_set),
        );
        let (k, set) = soa_set(&origin, &soa, ttl);
        records.insert(k, Arc::new(set));
        LabZone {
            zone,
            soa: std::sync::Mutex::new(soa),
            ttl,
            inner,
        }
    }

    pub(crate) fn serial(&self) -> u32 {
        self.soa.lock().expect("soa lock").serial
    }

    /// Replaces (or removes) one RRset.
    pub(crate) async fn put(&self, key: RrKey, set: Option<RecordSet>) {
        let mut records = self.zone.records_mut().await;
        match set {
            Some(s) => records.insert(key, Arc::new(s)),
            None => records.remove(&key),
        };
    }

    /// The data of one RRset (empty when there is none).
    pub(crate) async fn rrset(&self, key: &RrKey) -> Vec<RData> {
        let records = self.zone.records().await;
        records
            .get(key)
            .map(|s| s.records_without_rrsigs().map(|r| r.data.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether `name` has any record.
    pub(crate) async fn name_in_use(&self, name: &LowerName) -> bool {
        self.zone.records().await.keys().any(|k| &k.name == name)
    }

    /// A new serial: one more, or the time if that is later (so a restart never goes back).
    pub(crate) async fn bump_serial(&self) {
        {
            let mut soa = self.soa.lock().expect("soa lock");
            soa.serial = soa.serial.wrapping_add(1).max(super::initial_serial());
        }
        let soa = self.soa.lock().expect("soa lock").clone();
        let (k, set) = soa_set(&self.origin().into(), &soa, self.ttl);
        self.put(k, Some(set)).await;
    }

    /// The zone's serial and records, each with the owner it came from.
    pub(crate) async fn listing(&self, view: &View) -> (u32, Vec<Listed>) {
        let records = self.zone.records().await;
        let mut out = Vec::new();
        for (k, set) in records.iter() {
            let owners = view.owners_of(k);
            for r in set.records_without_rrsigs() {
                let owner = owners
                    .iter()
                    .find(|(_, rs)| rs.iter().any(|o| o.data == r.data))
                    .map(|(o, _)| o.to_string())
                    .unwrap_or_else(|| "zone".into());
                out.push(Listed {
                    zone: self.origin().to_string(),
                    name: r.name.to_string(),
                    ttl: r.ttl,
                    rtype: r.record_type().to_string(),
                    data: r.data.to_string(),
                    owner,
                });
            }
        }
        (self.serial(), out)
    }

    pub(crate) fn shared(&self) -> Option<Arc<Inner>> {
        self.inner.upgrade()
    }
}

fn soa_set(origin: &Name, soa: &SOA, ttl: u32) -> (RrKey, RecordSet) {
    let mut set = RecordSet::with_ttl(origin.clone(), RecordType::SOA, ttl);
    set.insert(
        Record::from_rdata(origin.clone(), ttl, RData::SOA(soa.clone())),
        0,
    );
    (RrKey::new(LowerName::new(origin), RecordType::SOA), set)
}

fn count(inner: &Option<Arc<Inner>>, f: impl Fn(&Stats) -> &std::sync::atomic::AtomicU64) {
    if let Some(i) = inner {
        Stats::add(f(&i.stats));
    }
}

#[async_trait::async_trait]
impl ZoneHandler for LabZone {
    fn zone_type(&self) -> ZoneType {
        ZoneType::Primary
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::AllowAll
    }

    fn origin(&self) -> &LowerName {
        self.zone.origin()
    }

    async fn update(
        &self,
        request: &Request,
        now: u64,
    ) -> (Result<bool, ResponseCode>, Option<TSigResponseContext>) {
        super::update::apply(self, request, now).await
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        request_info: Option<&RequestInfo<'_>>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        self.zone
            .lookup(name, rtype, request_info, lookup_options)
            .await
    }

    async fn search(
        &self,
        request: &Request,
        lookup_options: LookupOptions,
    ) -> (LookupControlFlow<AuthLookup>, Option<TSigResponseContext>) {
        self.zone.search(request, lookup_options).await
    }

    async fn nsec_records(
        &self,
        name: &LowerName,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        self.zone.nsec_records(name, lookup_options).await
    }

    async fn nsec3_records(
        &self,
        info: Nsec3QueryInfo<'_>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        self.zone.nsec3_records(info, lookup_options).await
    }

    /// Only the configured secondaries get the zone.
    async fn zone_transfer(
        &self,
        request: &Request,
        lookup_options: LookupOptions,
        now: u64,
    ) -> Option<(
        Result<ZoneTransfer, LookupError>,
        Option<TSigResponseContext>,
    )> {
        let inner = self.shared();
        let src = request.src().ip();
        let allowed = inner
            .as_ref()
            .is_some_and(|i| i.settings.secondaries.iter().any(|s| s.ip() == src));
        if !allowed {
            count(&inner, |s| &s.transfers_refused);
            if let Some(i) = &inner {
                i.store.said(
                    "dns.transfer",
                    format!(
                        "zone transfer of {} refused to {src}: not a secondary",
                        self.origin()
                    ),
                );
            }
            return Some((Err(LookupError::from(ResponseCode::Refused)), None));
        }
        count(&inner, |s| &s.transfers);
        self.zone.zone_transfer(request, lookup_options, now).await
    }

    fn nx_proof_kind(&self) -> Option<&NxProofKind> {
        None
    }
}
