//! Per-source limits without locks: request rate and open connections.
//!
//! Both use a count-min sketch: two rows of atomic counters, each source
//! address hashed into one counter per row with independent keys; the
//! estimate is the smaller of the two. A sketch never under-counts, so a
//! flood is always caught; two addresses rarely share both counters, so
//! innocent clients are rarely over-counted. Fixed memory, no allocation, no
//! lock, whatever the number of attackers.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const WIDTH: usize = 4096;

/// Hashes an address into both rows.
struct Keys([std::collections::hash_map::RandomState; 2]);

impl Keys {
    fn new() -> Self {
        Self([Default::default(), Default::default()])
    }

    fn slots(&self, ip: IpAddr) -> [usize; 2] {
        // IPv4-mapped IPv6 counts as the IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.each_ref().map(|k| (k.hash_one(ip) as usize) % WIDTH)
    }
}

/// Requests per fixed one-minute window per source.
pub struct RateLimiter {
    keys: Keys,
    /// Each counter packs (window number << 32) | count.
    rows: [Box<[AtomicU64]>; 2],
    per_minute: u32,
}

impl RateLimiter {
    /// At most `per_minute` requests per source per minute.
    pub fn new(per_minute: u32) -> Self {
        Self {
            keys: Keys::new(),
            rows: [0, 1].map(|_| (0..WIDTH).map(|_| AtomicU64::new(0)).collect()),
            per_minute,
        }
    }

    /// Counts one request from `ip` in minute `window`; false when over the limit.
    pub fn allow(&self, ip: IpAddr, window: u64) -> bool {
        let window = window & 0xffff_ffff;
        let mut estimate = u64::MAX;
        for (row, slot) in self.rows.iter().zip(self.keys.slots(ip)) {
            let c = &row[slot];
            let mut cur = c.load(Ordering::Relaxed);
            loop {
                let (w, n) = (cur >> 32, cur & 0xffff_ffff);
                let next = if w == window {
                    (w << 32) | (n + 1).min(0xffff_ffff)
                } else {
                    (window << 32) | 1
                };
                match c.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => {
                        estimate = estimate.min(next & 0xffff_ffff);
                        break;
                    }
                    Err(actual) => cur = actual,
                }
            }
        }
        estimate <= u64::from(self.per_minute)
    }
}

/// Open connections per source.
pub struct ConnectionLimiter {
    keys: Keys,
    rows: [Box<[AtomicU64]>; 2],
    max: u32,
}

/// Holds one connection slot; gives it back when dropped.
pub struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    slots: [usize; 2],
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        for (row, slot) in self.limiter.rows.iter().zip(self.slots) {
            row[slot].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl ConnectionLimiter {
    /// At most `max` open connections per source.
    pub fn new(max: u32) -> Self {
        Self {
            keys: Keys::new(),
            rows: [0, 1].map(|_| (0..WIDTH).map(|_| AtomicU64::new(0)).collect()),
            max,
        }
    }

    /// Takes a slot for a new connection from `ip`, or `None` when it has too many.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let slots = self.keys.slots(ip);
        let mut estimate = u64::MAX;
        for (row, slot) in self.rows.iter().zip(slots) {
            estimate = estimate.min(row[slot].fetch_add(1, Ordering::Relaxed) + 1);
        }
        let taken = ConnectionSlot {
            limiter: self.clone(),
            slots,
        };
        (estimate <= u64::from(self.max)).then_some(taken)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_per_source_and_window() {
        let r = RateLimiter::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| r.allow(a, 7)));
        assert!(!r.allow(a, 7));
        assert!(r.allow(b, 7), "another source is unaffected");
        assert!(r.allow(a, 8), "a new window starts fresh");
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        assert!(r.allow(mapped, 7));
        assert!(r.allow(b, 7));
        assert!(!r.allow(b, 7), "IPv4-mapped counts as the IPv4 source");
    }

    #[test]
    fn connection_slots_are_returned() {
        let l = Arc::new(ConnectionLimiter::new(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert!(l.acquire(a).is_none());
        drop(s1);
        assert!(l.acquire(a).is_some());
    }
}
