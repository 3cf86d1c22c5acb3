//! Client networks: CIDR allow-lists and the client address behind trusted proxies.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{DomainError, DomainResult, FieldError};

/// A list of CIDRs; empty means "no restriction" for allow-lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct CidrList(Vec<IpNet>);

impl CidrList {
    /// Most entries a list may hold.
    pub const MAX_ENTRIES: usize = 256;

    /// Parses CIDRs; a bare address means a single host (`/32` or `/128`).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> DomainResult<Self> {
        let mut nets = Vec::with_capacity(items.len());
        let mut errors = Vec::new();
        if items.len() > Self::MAX_ENTRIES {
            errors.push(FieldError::new("allowed_ips", "at most 256 entries"));
        }
        for (i, item) in items.iter().enumerate() {
            let text = item.as_ref();
            let parsed = text.parse::<IpNet>().or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => errors.push(FieldError::new(
                    format!("allowed_ips[{i}]"),
                    format!("{text:?} is not a CIDR or IP address"),
                )),
            }
        }
        if errors.is_empty() {
            Ok(Self(nets))
        } else {
            Err(DomainError::Invalid(errors))
        }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is inside one of the networks (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Allow-list semantics: empty allows everything.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.is_empty() || self.contains(ip)
    }

    /// Allow-list semantics: whether every address `other` allows is allowed here too.
    pub fn covers(&self, other: &CidrList) -> bool {
        if self.is_empty() {
            return true;
        }
        !other.is_empty() && other.0.iter().all(|inner| self.0.iter().any(|outer| outer.contains(inner)))
    }

    /// The CIDRs as text.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl TryFrom<Vec<String>> for CidrList {
    type Error = DomainError;
    fn try_from(v: Vec<String>) -> DomainResult<Self> {
        Self::parse(&v)
    }
}

impl From<CidrList> for Vec<String> {
    fn from(c: CidrList) -> Self {
        c.to_strings()
    }
}

/// The client address of a request. `X-Forwarded-For` is believed only when the peer is a
/// trusted proxy, and then walked from the right, skipping trusted proxies, so a client cannot
/// spoof its address by sending the header itself.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted_proxies: &CidrList) -> IpAddr {
    let peer = canonical(peer);
    if trusted_proxies.is_empty() || !trusted_proxies.contains(peer) {
        return peer;
    }
    let Some(header) = forwarded_for else { return peer };
    let mut client = peer;
    for hop in header.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !trusted_proxies.contains(client) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn parses_cidrs_and_bare_addresses() {
        let list = CidrList::parse(&["10.0.0.0/8", "192.168.1.7", "::1"]).expect("valid");
        assert!(list.contains(ip("10.1.2.3")));
        assert!(list.contains(ip("192.168.1.7")));
        assert!(!list.contains(ip("192.168.1.8")));
        assert!(list.contains(ip("::1")));
        assert!(list.contains(ip("::ffff:10.0.0.1")));
        assert!(CidrList::parse(&["10.0.0.0/33"]).is_err());
        assert!(CidrList::parse(&["nope"]).is_err());
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let trusted = CidrList::parse(&["10.0.0.0/8"]).expect("valid");
        assert_eq!(client_ip(ip("203.0.113.9"), Some("1.2.3.4"), &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("10.0.0.2"), Some("1.2.3.4"), &CidrList::default()), ip("10.0.0.2"));
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right_past_trusted_hops() {
        let trusted = CidrList::parse(&["10.0.0.0/8"]).expect("valid");
        // The client spoofed 127.0.0.1 on the left; the proxy appended the real address.
        assert_eq!(client_ip(ip("10.0.0.2"), Some("127.0.0.1, 198.51.100.4, 10.0.0.3"), &trusted), ip("198.51.100.4"));
        assert_eq!(client_ip(ip("10.0.0.2"), Some("garbage"), &trusted), ip("10.0.0.2"));
    }
}
