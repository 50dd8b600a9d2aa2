//! The records by owner, and the patching of the zones when an owner's records change.

use std::collections::{BTreeMap, HashMap};

use hickory_server::proto::rr::{LowerName, RData, Record, RecordSet, RecordType, RrKey};

use hickory_server::zone_handler::ZoneHandler;

use super::Inner;

/// What to do when a name's address is held by another owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The name is taken from the holders (config beats a client's wish), which lose all their
    /// records.
    Take,
    /// Nothing changes and the caller is told who holds it.
    IfFree,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("{name} already points elsewhere ({holder})")]
    Held { name: String, holder: String },
    #[error("{0} is in none of the appliance's zones")]
    Outside(String),
}

/// Types whose records at one name must all come from one owner: two owners giving one name two
/// addresses is the stale record dnsmasq's users complain of.
const EXCLUSIVE: [RecordType; 3] = [RecordType::A, RecordType::AAAA, RecordType::CNAME];

#[derive(Default)]
pub(crate) struct View {
    owners: HashMap<String, Vec<Record>>,
    sets: HashMap<RrKey, BTreeMap<String, Vec<Record>>>,
}

fn key(r: &Record) -> RrKey {
    RrKey::new(LowerName::new(&r.name), r.record_type())
}

impl View {
    /// Who, other than the owner of records equal to (`name`, `data`), holds `name`'s `rtype`.
    pub(crate) fn holder(
        &self,
        name: &LowerName,
        rtype: RecordType,
        data: &RData,
    ) -> Option<String> {
        let set = self.sets.get(&RrKey::new(name.clone(), rtype))?;
        set.iter()
            .find(|(_, recs)| recs.iter().any(|r| &r.data != data))
            .map(|(o, _)| o.clone())
    }

    pub(crate) fn owned(&self, owner: &str) -> &[Record] {
        self.owners.get(owner).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The owners of the records at `key`.
    pub(crate) fn owners_of(&self, key: &RrKey) -> Vec<(&str, &[Record])> {
        self.sets
            .get(key)
            .map(|m| m.iter().map(|(o, r)| (o.as_str(), r.as_slice())).collect())
            .unwrap_or_default()
    }

    /// Names (with the holder) where `records` would give an exclusive type a second source.
    fn conflicts(&self, owner: &str, records: &[Record]) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for r in records
            .iter()
            .filter(|r| EXCLUSIVE.contains(&r.record_type()))
        {
            let Some(set) = self.sets.get(&key(r)) else {
                continue;
            };
            for (holder, theirs) in set {
                let same = theirs
                    .iter()
                    .all(|t| records.iter().any(|m| m.name == t.name && m.data == t.data));
                if holder != owner && !same {
                    found.push((r.name.to_string(), holder.clone()));
                }
            }
        }
        found
    }

    pub(crate) async fn set(
        &mut self,
        inner: &Inner,
        owner: &str,
        records: Vec<Record>,
        claim: Claim,
    ) -> Result<Vec<String>, Conflict> {
        for r in &records {
            if inner.zone_of(&LowerName::new(&r.name)).is_none() {
                return Err(Conflict::Outside(r.name.to_string()));
            }
        }
        let conflicts = self.conflicts(owner, &records);
        let mut touched = Vec::new();
        let mut evicted = Vec::new();
        if let Some((name, holder)) = conflicts.first() {
            if claim == Claim::IfFree {
                return Err(Conflict::Held {
                    name: name.clone(),
                    holder: holder.clone(),
                });
            }
            for (_, holder) in conflicts {
                if !evicted.contains(&holder) {
                    touched.extend(self.replace(&holder, Vec::new()));
                    evicted.push(holder);
                }
            }
        }
        touched.extend(self.replace(owner, records));
        self.patch(inner, touched).await;
        Ok(evicted)
    }

    /// Swaps `owner`'s records; returns the RRsets that changed.
    fn replace(&mut self, owner: &str, records: Vec<Record>) -> Vec<RrKey> {
        let old = self.owners.remove(owner).unwrap_or_default();
        let mut keys: Vec<RrKey> = old.iter().chain(&records).map(key).collect();
        for r in &old {
            let k = key(r);
            if let Some(set) = self.sets.get_mut(&k) {
                set.remove(owner);
                if set.is_empty() {
                    self.sets.remove(&k);
                }
            }
        }
        for r in &records {
            self.sets
                .entry(key(r))
                .or_default()
                .entry(owner.to_string())
                .or_default()
                .push(r.clone());
        }
        if !records.is_empty() {
            self.owners.insert(owner.to_string(), records);
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// The RRset of `key` as all its owners make it.
    fn rrset(&self, key: &RrKey) -> Option<RecordSet> {
        let mut set: Option<RecordSet> = None;
        for r in self.sets.get(key)?.values().flatten() {
            let s = set
                .get_or_insert_with(|| RecordSet::with_ttl(r.name.clone(), r.record_type(), r.ttl));
            s.insert(r.clone(), 0);
            if r.ttl < s.ttl() {
                s.set_ttl(r.ttl);
            }
        }
        set
    }

    /// Puts the changed RRsets into their zones and bumps those zones' serials.
    async fn patch(&self, inner: &Inner, keys: Vec<RrKey>) {
        if keys.is_empty() {
            return;
        }
        let mut zones = BTreeMap::new();
        for k in keys {
            let Some(zone) = inner.zone_of(&k.name) else {
                continue;
            };
            zone.put(k.clone(), self.rrset(&k)).await;
            zones.insert(zone.origin().clone(), zone);
        }
        for (origin, zone) in zones {
            zone.bump_serial().await;
            let _ = inner.notify.send(origin);
        }
        inner.changed();
    }
}
