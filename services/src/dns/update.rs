//! RFC 2136 dynamic updates of the static records, signed with TSIG (RFC 8945). An update must
//! be signed by a configured key; it changes only the records earlier updates made (owner
//! `update`), never a lease's, a host's or the zone's SOA and NS; it is answered once the new
//! static records are durable.

use std::collections::HashMap;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use hickory_server::proto::rr::{
    DNSClass, LowerName, RData, Record, RecordType, RrKey, TSigResponseContext, TSigner,
};
use hickory_server::proto::serialize::binary::BinEncodable;
use hickory_server::server::Request;
use hickory_server::zone_handler::{UpdateRequest, ZoneHandler};

use super::view::{Claim, View};
use super::zone::LabZone;
use super::{fqdn, Inner, Stats, TsigKey};

/// The owner of the records updates add.
pub(crate) const OWNER: &str = "update";

/// The signer of a configured key (300 s of clock skew allowed, RFC 8945's recommendation).
pub(crate) fn signer(k: &TsigKey) -> Result<TSigner, String> {
    let algorithm = match k.algorithm.as_str() {
        "hmac-sha256" => TsigAlgorithm::HmacSha256,
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        other => return Err(format!("TSIG algorithm `{other}` is not supported")),
    };
    TSigner::new(k.secret.clone(), algorithm, fqdn(&k.name)?, 300)
        .map_err(|e| format!("TSIG key {}: {e}", k.name))
}

pub(crate) async fn apply(
    zone: &LabZone,
    request: &Request,
    now: u64,
) -> (Result<bool, ResponseCode>, Option<TSigResponseContext>) {
    let Some(inner) = zone.shared() else {
        return (Err(ResponseCode::ServFail), None);
    };
    let from = request.src().ip();
    let (auth, ctx) = authorize(&inner, request, now);
    if let Err((code, why)) = auth {
        Stats::add(&inner.stats.updates_refused);
        inner.store.said(
            "dns.update",
            format!("update of {} from {from} refused: {why}", zone.origin()),
        );
        return (Err(code), ctx);
    }
    let mut view = inner.view.lock().await;
    match run(&inner, zone, &mut view, request).await {
        Ok(summary) => {
            Stats::add(&inner.stats.updates);
            tracing::info!("DNS update of {} from {from}: {summary}", zone.origin());
            (Ok(true), ctx)
        }
        Err((code, why)) => {
            Stats::add(&inner.stats.updates_refused);
            inner.store.said(
                "dns.update",
                format!(
                    "update of {} from {from} failed ({code}): {why}",
                    zone.origin()
                ),
            );
            (Err(code), ctx)
        }
    }
}

type Refusal = (ResponseCode, String);

fn authorize(
    inner: &Inner,
    request: &Request,
    now: u64,
) -> (Result<(), Refusal>, Option<TSigResponseContext>) {
    let id = request.id();
    let Some(tsig) = request.signature() else {
        return (
            Err((
                ResponseCode::Refused,
                "not signed (a TSIG key is required)".into(),
            )),
            None,
        );
    };
    let signer = inner
        .settings
        .tsig_keys
        .iter()
        .filter_map(|k| signer(k).ok())
        .find(|s| s.signer_name() == &tsig.name);
    let Some(signer) = signer else {
        return (
            Err((
                ResponseCode::NotAuth,
                format!("unknown TSIG key {}", tsig.name),
            )),
            Some(TSigResponseContext::unknown_key(id, now, tsig.name.clone())),
        );
    };
    let Ok((_, _, range)) = signer.verify_message_byte(request.as_slice(), None, true) else {
        return (
            Err((
                ResponseCode::NotAuth,
                format!("bad signature for key {}", tsig.name),
            )),
            Some(TSigResponseContext::bad_signature(id, now, signer)),
        );
    };
    if !range.contains(&now) {
        let ctx = TSigResponseContext::new(
            id,
            now,
            signer,
            tsig.data.mac.clone(),
            Some(TsigError::BadTime),
        );
        return (
            Err((
                ResponseCode::NotAuth,
                "signed at a time too far from ours".into(),
            )),
            Some(ctx),
        );
    }
    let ctx = TSigResponseContext::new(id, now, signer, tsig.data.mac.clone(), None);
    (Ok(()), Some(ctx))
}

/// An update's "empty RDATA" (RFC 2136 2.4/2.5): class ANY or NONE with no data.
fn empty(r: &Record) -> bool {
    matches!(r.data, RData::Update0(_))
}

fn same_name(a: &Record, b: &Record) -> bool {
    LowerName::new(&a.name) == LowerName::new(&b.name)
}

async fn run(
    inner: &Inner,
    zone: &LabZone,
    view: &mut View,
    request: &Request,
) -> Result<String, Refusal> {
    let origin = zone.origin().clone();
    let in_zone = |r: &Record| -> Result<LowerName, Refusal> {
        let name = LowerName::new(&r.name);
        if origin.zone_of(&name) {
            Ok(name)
        } else {
            Err((
                ResponseCode::NotZone,
                format!("{} is outside {origin}", r.name),
            ))
        }
    };
    let formerr = |r: &Record, why: &str| (ResponseCode::FormErr, format!("{}: {why}", r.name));

    // 3.2: prerequisites.
    let mut wanted: HashMap<RrKey, Vec<RData>> = HashMap::new();
    for p in request.prerequisites() {
        let name = in_zone(p)?;
        if p.ttl != 0 {
            return Err(formerr(p, "a prerequisite's TTL must be 0"));
        }
        let rtype = p.record_type();
        match p.dns_class {
            DNSClass::ANY | DNSClass::NONE if !empty(p) => {
                return Err(formerr(
                    p,
                    "a prerequisite of class ANY or NONE has no data",
                ))
            }
            DNSClass::ANY if rtype == RecordType::ANY => {
                if !zone.name_in_use(&name).await {
                    return Err((ResponseCode::NXDomain, format!("{} is not in use", p.name)));
                }
            }
            DNSClass::ANY => {
                if zone.rrset(&RrKey::new(name, rtype)).await.is_empty() {
                    return Err((ResponseCode::NXRRSet, format!("no {rtype} at {}", p.name)));
                }
            }
            DNSClass::NONE if rtype == RecordType::ANY => {
                if zone.name_in_use(&name).await {
                    return Err((ResponseCode::YXDomain, format!("{} is in use", p.name)));
                }
            }
            DNSClass::NONE => {
                if !zone.rrset(&RrKey::new(name, rtype)).await.is_empty() {
                    return Err((
                        ResponseCode::YXRRSet,
                        format!("{rtype} at {} exists", p.name),
                    ));
                }
            }
            DNSClass::IN => wanted
                .entry(RrKey::new(name, rtype))
                .or_default()
                .push(p.data.clone()),
            _ => return Err(formerr(p, "a prerequisite's class must be IN, ANY or NONE")),
        }
    }
    for (key, mut want) in wanted {
        let mut have = zone.rrset(&key).await;
        let text = |v: &mut Vec<RData>| {
            let mut t: Vec<String> = v.iter().map(|d| d.to_string()).collect();
            t.sort();
            t.dedup();
            t
        };
        if text(&mut want) != text(&mut have) {
            return Err((
                ResponseCode::NXRRSet,
                format!("{} {} is not as required", key.name, key.record_type),
            ));
        }
    }

    // 3.4.1: prescan.
    let meta = [
        RecordType::ANY,
        RecordType::AXFR,
        RecordType::IXFR,
        RecordType::OPT,
    ];
    for u in request.updates() {
        in_zone(u)?;
        let rtype = u.record_type();
        match u.dns_class {
            DNSClass::IN if meta.contains(&rtype) => return Err(formerr(u, "not a record type")),
            DNSClass::ANY if u.ttl != 0 || !empty(u) => {
                return Err(formerr(u, "a deletion has TTL 0 and no data"))
            }
            DNSClass::NONE if u.ttl != 0 || rtype == RecordType::ANY => {
                return Err(formerr(u, "a deletion has TTL 0"))
            }
            DNSClass::IN | DNSClass::ANY | DNSClass::NONE => {}
            _ => return Err(formerr(u, "class must be IN, ANY or NONE")),
        }
    }

    // 3.4.2: the update, on a copy of the static records.
    let before = view.owned(OWNER).to_vec();
    let mut mine = before.clone();
    let mut skipped = 0;
    for u in request.updates() {
        let rtype = u.record_type();
        let apex = LowerName::new(&u.name) == origin;
        if rtype == RecordType::SOA || (apex && rtype == RecordType::NS) {
            // The appliance keeps the SOA and the apex NS itself.
            skipped += 1;
            continue;
        }
        let same_set = |r: &Record| same_name(r, u) && r.record_type() == rtype;
        match u.dns_class {
            DNSClass::IN => {
                if rtype == RecordType::CNAME {
                    mine.retain(|r| !same_set(r));
                }
                mine.retain(|r| !(same_set(r) && r.data == u.data));
                let mut r = u.clone();
                r.dns_class = DNSClass::IN;
                mine.push(r);
            }
            DNSClass::ANY if rtype == RecordType::ANY => mine.retain(|r| !same_name(r, u)),
            DNSClass::ANY => mine.retain(|r| !same_set(r)),
            _ => mine.retain(|r| !(same_set(r) && r.data == u.data)),
        }
    }
    if mine == before {
        return Ok(format!(
            "nothing changed ({skipped} SOA/NS records left to the appliance)"
        ));
    }
    view.set(inner, OWNER, mine.clone(), Claim::IfFree)
        .await
        .map_err(|e| (ResponseCode::Refused, e.to_string()))?;
    let saved = mine
        .iter()
        .map(|r| Ok((r.to_bytes()?, r.to_string())))
        .collect::<Result<Vec<_>, hickory_server::proto::ProtoError>>();
    let saved = match saved {
        Ok(s) => inner.store.save_static(s).await,
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = saved {
        // Not durable: undo, so that what is served is what a restart would serve.
        let _ = view.set(inner, OWNER, before, Claim::Take).await;
        return Err((
            ResponseCode::ServFail,
            format!("the records could not be saved: {e}"),
        ));
    }
    Ok(format!("{} static records now", mine.len()))
}
