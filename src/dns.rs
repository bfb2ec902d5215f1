//! Host names to addresses, cached: crawlq resolves names itself and tells the HTTP client
//! which address to connect to.
//!
//! curl keeps a DNS cache of its own, but prunes it by walking every entry at the end of
//! every transfer: with 10 000 hosts that walk was a fifth of the daemon's CPU. This cache
//! never walks its entries on the way of a request: an entry is checked when it is used,
//! and the whole map is swept only when it is full.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::runtime;

/// How long an answer is used (curl's default DNS cache time, which this replaces).
const KEEP_FOR: Duration = Duration::from_secs(60);
/// Names kept at most; past this, expired names are dropped, then the whole map if need be.
const MOST_NAMES: usize = 10_000;

#[derive(Default)]
pub struct DnsCache {
    names: Mutex<HashMap<String, (Vec<IpAddr>, Instant)>>,
}

impl DnsCache {
    /// The addresses of `name` (a host name, not an IP literal), from the cache while its
    /// answer is fresh, else from the system's resolver. Failures are not cached.
    pub async fn resolve(&self, name: &str) -> std::io::Result<Vec<IpAddr>> {
        let now = Instant::now();
        if let Some((addresses, expires)) = self.names.lock().expect("dns cache lock").get(name) {
            if *expires > now {
                return Ok(addresses.clone());
            }
        }
        let addresses: Vec<IpAddr> = runtime::resolve(name, 0)
            .await?
            .into_iter()
            .map(|address| address.ip())
            .collect();
        let mut names = self.names.lock().expect("dns cache lock");
        if names.len() >= MOST_NAMES {
            names.retain(|_, (_, expires)| *expires > now);
            if names.len() >= MOST_NAMES {
                names.clear();
            }
        }
        names.insert(name.to_owned(), (addresses.clone(), now + KEEP_FOR));
        Ok(addresses)
    }
}

/// The address to connect to among `addresses`: the first IPv4 one if there is one (a
/// container often has no IPv6 route), else the first.
pub fn preferred(addresses: &[IpAddr]) -> Option<IpAddr> {
    addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addresses.first())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_resolves_once_and_prefers_ipv4() {
        let cache = DnsCache::default();
        runtime::block_on(async {
            let first = cache
                .resolve("localhost")
                .await
                .expect("localhost resolves");
            assert_eq!(
                preferred(&first),
                Some(IpAddr::from([127, 0, 0, 1])),
                "{first:?}"
            );
            assert_eq!(cache.resolve("localhost").await.unwrap(), first);
            assert_eq!(cache.names.lock().unwrap().len(), 1);
        });
    }
}
