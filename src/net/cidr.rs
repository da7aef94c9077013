//! Address ranges for the listeners' `allow`, `proxy_trusted` and `trusted_networks` lists and
//! the accounts' `networks`.

use std::net::IpAddr;

/// An address range such as `10.0.0.0/8` or `::1/128` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or a CIDR range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True for `0.0.0.0/0` and `::/0`: every address.
    pub fn is_everything(&self) -> bool {
        self.prefix == 0
    }

    /// Wider than a /16 (IPv4) or a /48 (IPv6): more than one site's network.
    pub fn is_wide(&self) -> bool {
        match self.network {
            IpAddr::V4(_) => self.prefix < 16,
            IpAddr::V6(_) => self.prefix < 48,
        }
    }

    /// True unless the whole range is loopback, private (RFC 1918, RFC 4193), shared
    /// (RFC 6598) or link-local: a range that reaches addresses on the Internet.
    pub fn is_public(&self) -> bool {
        let inside = |outer: &str| outer.parse::<Cidr>().is_ok_and(|o| o.covers(self));
        let local: &[&str] = match self.network {
            IpAddr::V4(_) => &[
                "127.0.0.0/8",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "100.64.0.0/10",
                "169.254.0.0/16",
            ],
            IpAddr::V6(_) => &["::1/128", "fc00::/7", "fe80::/10"],
        };
        !local.iter().any(|r| inside(r))
    }

    /// True when every address of `other` is in this range.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.network)
    }

    /// True when the two ranges share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// True when `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_ranges() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.200.1.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
        assert!(all.is_everything() && all.is_wide() && all.is_public());
    }

    #[test]
    fn wide_public_and_overlapping_ranges() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        assert!(!c("192.168.10.0/24").is_wide());
        assert!(!c("192.168.10.0/24").is_public());
        assert!(c("10.0.0.0/8").is_wide());
        assert!(!c("10.0.0.0/8").is_public());
        assert!(c("203.0.113.7/32").is_public());
        assert!(c("172.0.0.0/8").is_public(), "only part of it is private");
        assert!(!c("fd12:3456::/48").is_wide());
        assert!(c("fd12::/32").is_wide());
        assert!(c("2001:db8::/64").is_public());
        assert!(c("192.168.0.0/16").overlaps(&c("192.168.10.0/24")));
        assert!(c("192.168.10.0/24").overlaps(&c("192.168.0.0/16")));
        assert!(!c("192.168.10.0/24").overlaps(&c("192.168.11.0/24")));
        assert_eq!(c("10.1.2.3").to_string(), "10.1.2.3/32");
    }
}
