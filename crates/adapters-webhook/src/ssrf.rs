//! The SSRF guard: which addresses a webhook may reach, checked when a subscription is created
//! and again for every connection (through the client's resolver, so a name that resolves to a
//! public address at creation and to a private one later — DNS rebinding — is still refused).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;

use ipnet::{Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Host;

/// IPv4 ranges no webhook may reach: "this network", private (RFC 1918), shared address space
/// (CGNAT), loopback, link-local (cloud metadata at 169.254.169.254), IETF protocol
/// assignments, benchmarking, multicast, reserved and broadcast.
const FORBIDDEN_V4: [(Ipv4Addr, u8); 12] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
    (Ipv4Addr::new(255, 255, 255, 255), 32),
];

/// IPv6 ranges no webhook may reach: unspecified, loopback, unique-local, link-local,
/// site-local (deprecated) and multicast.
const FORBIDDEN_V6: [(Ipv6Addr, u8); 6] = [
    (Ipv6Addr::UNSPECIFIED, 128),
    (Ipv6Addr::LOCALHOST, 128),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

fn in_v4(ip: Ipv4Addr) -> bool {
    FORBIDDEN_V4.iter().any(|(net, len)| Ipv4Net::new(*net, *len).is_ok_and(|n| n.contains(&ip)))
}

/// The IPv4 address an IPv6 address carries, for the forms that reach IPv4 hosts: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`), 6to4 (`2002:AABB:CCDD::`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

/// Whether `ip` lies in a range webhooks may not reach.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => in_v4(v4),
        IpAddr::V6(v6) => {
            FORBIDDEN_V6.iter().any(|(net, len)| Ipv6Net::new(*net, *len).is_ok_and(|n| n.contains(&v6)))
                || embedded_v4(v6).is_some_and(in_v4)
        }
    }
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The host resolves (or is) an address in a forbidden range.
    #[error("{host} resolves to {ip}, which is in a private, loopback or link-local range")]
    Forbidden {
        /// The host as written.
        host: String,
        /// The offending address.
        ip: IpAddr,
    },
    /// The host does not resolve.
    #[error("{host} does not resolve: {reason}")]
    Unresolvable {
        /// The host as written.
        host: String,
        /// The resolver's answer.
        reason: String,
    },
}

/// The address of an IP-literal host, `None` for a domain name.
pub fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        Host::Domain(_) => None,
    }
}

/// Checks a target when a subscription is created: an IP literal must be allowed, and a name
/// must resolve, to allowed addresses only.
pub async fn check_url(url: &url::Url) -> Result<(), TargetError> {
    let host = url.host_str().unwrap_or_default().to_owned();
    let addresses: Vec<IpAddr> = match literal_ip(url) {
        Some(ip) => vec![ip],
        None => {
            let port = url.port_or_known_default().unwrap_or(443);
            let found = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| TargetError::Unresolvable { host: host.clone(), reason: e.to_string() })?;
            found.map(|a| a.ip()).collect()
        }
    };
    if addresses.is_empty() {
        return Err(TargetError::Unresolvable { host, reason: "no addresses".into() });
    }
    match addresses.into_iter().find(|ip| is_forbidden(*ip)) {
        Some(ip) => Err(TargetError::Forbidden { host, ip }),
        None => Ok(()),
    }
}

/// The client's resolver: resolves with the system resolver and keeps only allowed addresses,
/// so the address a connection is made to is always one that was checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let lookup: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| TargetError::Unresolvable { host: host.clone(), reason: e.to_string() })?;
            let all: Vec<SocketAddr> = found.collect();
            let allowed: Vec<SocketAddr> = all.iter().copied().filter(|a| !is_forbidden(a.ip())).collect();
            match (allowed.is_empty(), all.first()) {
                (false, _) => Ok(Box::new(allowed.into_iter()) as Addrs),
                (true, Some(first)) => Err(Box::new(TargetError::Forbidden { host, ip: first.ip() }) as _),
                (true, None) => Err(Box::new(TargetError::Unresolvable { host, reason: "no addresses".into() }) as _),
            }
        });
        lookup
    }
}

/// The `TargetError` somewhere in an error's source chain, if the guard caused it.
pub fn target_error_in(mut error: &(dyn std::error::Error + 'static)) -> Option<TargetError> {
    loop {
        if let Some(found) = error.downcast_ref::<TargetError>() {
            return Some(found.clone());
        }
        error = error.source()?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_forbidden() {
        for bad in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(is_forbidden(ip(bad)), "{bad} must be refused");
        }
        for good in ["93.184.216.34", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!is_forbidden(ip(good)), "{good} must be allowed");
        }
    }

    #[tokio::test]
    async fn literal_and_named_private_targets_are_refused_at_creation() {
        for bad in [
            "http://127.0.0.1/",
            "http://10.0.0.1/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:8080/",
            "http://localhost:9/",
            "http://2130706433/",
        ] {
            let url = url::Url::parse(bad).unwrap();
            assert!(matches!(check_url(&url).await, Err(TargetError::Forbidden { .. })), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_resolver_drops_forbidden_addresses() {
        let refused = GuardedResolver.resolve("localhost".parse().unwrap()).await;
        let error = refused.err().expect("localhost resolves only to loopback");
        assert!(matches!(target_error_in(error.as_ref()), Some(TargetError::Forbidden { .. })));
    }

    proptest! {
        #[test]
        fn every_mapped_form_of_a_forbidden_v4_address_is_forbidden(a in any::<u32>()) {
            let v4 = Ipv4Addr::from(a);
            prop_assert_eq!(is_forbidden(IpAddr::V6(v4.to_ipv6_mapped())), is_forbidden(IpAddr::V4(v4)));
        }
    }
}
