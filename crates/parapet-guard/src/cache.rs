//! Bounded, sharded, lock-light caches for analyses and decisions, and the lossy doorkeeper
//! that admits to the decision cache only texts that come back.
//!
//! Bounded by bytes, not entries: each entry is inserted with an estimate of the memory it
//! holds (its weight), each shard keeps its entries' weights under its share of the budget, and
//! an entry heavier than an eighth of a shard's share is not cached at all (a text of several
//! megabytes would otherwise push out thousands of small ones, and keep its memory).
//!
//! Hand-written rather than a cache crate: the workspace's vetted dependency set has no cache
//! crate, the need is small (get/insert of `Arc`/cheap-clone values, bounded memory), and a
//! sharded map with per-shard `parking_lot` mutexes held only for a hash-map probe keeps
//! `decide` lock-light under many concurrent tokio tasks. Eviction is "clear one shard's oldest
//! half" (a generation-based approximation of LRU) which bounds memory without per-hit
//! bookkeeping on the read path beyond one relaxed store.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

const SHARDS: usize = 32;

struct Slot<V> {
    value: V,
    /// Estimated bytes held by the entry (key and value).
    weight: usize,
    /// Generation of the last hit: older entries are evicted first.
    last_used: AtomicU64,
}

struct Shard<K, V> {
    map: HashMap<K, Slot<V>, RandomState>,
    /// Sum of the entries' weights.
    bytes: usize,
}

/// A bounded concurrent cache. Values are cloned out (use `Arc` or cheap-clone values).
pub struct ShardedCache<K, V> {
    shards: Vec<Mutex<Shard<K, V>>>,
    hasher: RandomState,
    /// Weight budget of each shard.
    per_shard: usize,
    clock: AtomicU64,
}

/// Bytes an entry is counted for besides its key and value (hash-map slot, `Arc` headers).
pub const ENTRY_OVERHEAD: usize = 96;

impl<K: Hash + Eq, V: Clone> ShardedCache<K, V> {
    /// A cache holding entries weighing at most about `budget` bytes in all.
    pub fn new(budget: usize) -> Self {
        let per_shard = (budget / SHARDS).max(ENTRY_OVERHEAD * 8);
        ShardedCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::with_hasher(RandomState::new()),
                        bytes: 0,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            per_shard,
            clock: AtomicU64::new(0),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Mutex<Shard<K, V>> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % SHARDS]
    }

    /// Looks `key` up.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard(key).lock();
        shard.map.get(key).map(|slot| {
            slot.last_used
                .store(self.clock.load(Ordering::Relaxed), Ordering::Relaxed);
            slot.value.clone()
        })
    }

    /// Largest weight an entry may have to be cached.
    pub fn max_weight(&self) -> usize {
        self.per_shard / 8
    }

    /// Inserts `key → value`, weighing `weight` bytes (an estimate of the memory they hold),
    /// evicting the least recently used half of the shard until it fits. An entry over
    /// [`ShardedCache::max_weight`] is not inserted.
    pub fn insert(&self, key: K, value: V, weight: usize) {
        let weight = weight.saturating_add(ENTRY_OVERHEAD);
        if weight > self.max_weight() {
            return;
        }
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(&key).lock();
        let shard = &mut *shard;
        if let Some(old) = shard.map.remove(&key) {
            shard.bytes -= old.weight;
        }
        while shard.bytes + weight > self.per_shard && !shard.map.is_empty() {
            let mut ages: Vec<u64> = shard
                .map
                .values()
                .map(|s| s.last_used.load(Ordering::Relaxed))
                .collect();
            let mid = ages.len() / 2;
            let (_, median, _) = ages.select_nth_unstable(mid);
            let cutoff = *median;
            let mut freed = 0;
            shard.map.retain(|_, s| {
                let keep = s.last_used.load(Ordering::Relaxed) > cutoff;
                if !keep {
                    freed += s.weight;
                }
                keep
            });
            shard.bytes -= freed;
        }
        shard.bytes += weight;
        shard.map.insert(
            key,
            Slot {
                value,
                weight,
                last_used: AtomicU64::new(now),
            },
        );
    }

    /// Estimated bytes held by the entries (approximate under concurrency).
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }

    /// Removes every entry.
    pub fn clear(&self) {
        for s in &self.shards {
            let mut s = s.lock();
            s.map.clear();
            s.map.shrink_to_fit();
            s.bytes = 0;
        }
    }

    /// Number of entries (approximate under concurrency).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Remembers, lossily, which keys were seen: a fixed table of key hashes, one per slot, each
/// new key overwriting its slot. Answers "seen before?" without a lock or an allocation, for
/// admitting to a cache only what comes back (a "doorkeeper", as in TinyLFU). A wrong answer
/// only costs a cache entry made or not made.
pub struct Doorkeeper {
    slots: Box<[AtomicU64]>,
    hasher: RandomState,
}

impl Doorkeeper {
    /// A doorkeeper with `slots` slots (at least one).
    pub fn new(slots: usize) -> Self {
        Doorkeeper {
            slots: (0..slots.max(1)).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Notes `key`; returns whether it was noted before (and not overwritten since).
    pub fn seen_before<Q: Hash + ?Sized>(&self, key: &Q) -> bool {
        // Never 0, the value of an empty slot.
        let h = self.hasher.hash_one(key) | 1;
        let slot = &self.slots[(h % self.slots.len() as u64) as usize];
        slot.swap(h, Ordering::Relaxed) == h
    }

    /// Forgets every key.
    pub fn clear(&self) {
        for s in self.slots.iter() {
            s.store(0, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Doorkeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorkeeper")
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl<K, V> std::fmt::Debug for ShardedCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedCache")
            .field("per_shard", &self.per_shard)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_keeps_recent() {
        let budget = SHARDS * 8 * (ENTRY_OVERHEAD + 8);
        let c: ShardedCache<u64, u64> = ShardedCache::new(budget);
        for i in 0..10_000u64 {
            c.insert(i, i * 2, 8);
            // keep 0 hot
            assert_eq!(c.get(&0), Some(0), "hot key evicted at {i}");
        }
        assert!(c.len() <= SHARDS * 8, "cache grew to {}", c.len());
        assert!(c.bytes() <= budget, "cache weighs {}", c.bytes());
        assert_eq!(c.get(&9_999), Some(19_998));
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_by_bytes_and_heavy_entries_are_not_kept() {
        let budget = 1 << 20;
        let c: ShardedCache<u64, Vec<u8>> = ShardedCache::new(budget);
        for i in 0..2_000u64 {
            c.insert(i, vec![0; 1000], 1000);
        }
        assert!(c.bytes() <= budget, "cache weighs {}", c.bytes());
        assert!(c.len() > 100, "{}", c.len());
        c.insert(u64::MAX, vec![0; 100_000], 100_000);
        assert_eq!(
            c.get(&u64::MAX),
            None,
            "an entry over max_weight is not cached"
        );
        // Replacing an entry does not count it twice.
        for _ in 0..100 {
            c.insert(7, vec![0; 1000], 1000);
        }
        assert!(c.bytes() <= budget);
    }

    #[test]
    fn the_doorkeeper_knows_keys_it_saw() {
        let d = Doorkeeper::new(1024);
        assert!(!d.seen_before("a"));
        assert!(d.seen_before("a"));
        assert!(!d.seen_before("b"));
        assert!(d.seen_before("a") && d.seen_before("b"));
        d.clear();
        assert!(!d.seen_before("a"));
        // One slot: each new key takes the other's place.
        let one = Doorkeeper::new(1);
        assert!(!one.seen_before("a"));
        assert!(!one.seen_before("b"));
        assert!(!one.seen_before("a"));
    }
}
