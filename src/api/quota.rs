//! Connection quotas: how many connections one source IP, and how many WebSocket sessions
//! one token subject, may hold across the whole process.
//!
//! Each key is counted on exactly one shard, its owner by the runtime's fixed key hash (as
//! topics are), so the count is exact without locks: a shard that accepts a connection asks
//! the owner for a slot ([`acquire`]: one mesh round trip per connection, never per
//! message) and gives it back through the mesh when the connection ends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

use super::shard::Shard;
use crate::rt::mesh::Answer;
use crate::rt::owner::owner_of;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum QuotaKey {
    Ip(IpAddr),
    Subject(Box<str>),
}

impl QuotaKey {
    pub fn owner(&self, shards: usize) -> usize {
        match self {
            QuotaKey::Ip(ip) => owner_of(ip.to_string().as_bytes(), shards),
            QuotaKey::Subject(sub) => owner_of(sub.as_bytes(), shards),
        }
    }
}

/// The counts of the keys this shard owns.
#[derive(Default)]
pub struct Quotas {
    counts: RefCell<HashMap<QuotaKey, u32>>,
}

impl Quotas {
    /// Takes a slot if fewer than `limit` are held.
    pub fn admit(&self, key: QuotaKey, limit: u32) -> bool {
        let mut counts = self.counts.borrow_mut();
        let held = counts.entry(key).or_insert(0);
        if *held >= limit {
            return false;
        }
        *held += 1;
        true
    }

    pub fn release(&self, key: &QuotaKey) {
        let mut counts = self.counts.borrow_mut();
        if let Some(held) = counts.get_mut(key) {
            *held -= 1;
            if *held == 0 {
                counts.remove(key);
            }
        }
    }

    #[cfg(test)]
    fn held(&self, key: &QuotaKey) -> u32 {
        self.counts.borrow().get(key).copied().unwrap_or(0)
    }
}

/// A connection slot for `key`, if fewer than `limit` are held process-wide.
pub async fn acquire(shard: &Rc<Shard>, key: QuotaKey, limit: u32) -> Option<QuotaSlot> {
    let wanted = key.clone();
    let admitted = shard
        .on_quota(&key, move |owner| {
            Answer::now(owner.quotas.admit(wanted, limit))
        })
        .await;
    admitted.then(|| QuotaSlot {
        shard: Rc::clone(shard),
        key,
    })
}

/// One held slot; given back to the key's owner when dropped.
pub struct QuotaSlot {
    shard: Rc<Shard>,
    key: QuotaKey,
}

impl Drop for QuotaSlot {
    fn drop(&mut self) {
        let key = self.key.clone();
        let owner = key.owner(self.shard.count());
        self.shard
            .post(owner, move |owner| owner.quotas.release(&key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_forgets_released_keys() {
        let q = Quotas::default();
        let key = QuotaKey::Subject("alice".into());
        assert!(q.admit(key.clone(), 2));
        assert!(q.admit(key.clone(), 2));
        assert!(!q.admit(key.clone(), 2));
        q.release(&key);
        assert!(q.admit(key.clone(), 2));
        q.release(&key);
        q.release(&key);
        assert_eq!(q.held(&key), 0);
        assert!(q.counts.borrow().is_empty(), "no entry left behind");
        q.release(&key);
        assert_eq!(q.held(&key), 0, "an extra release is harmless");
    }
}
