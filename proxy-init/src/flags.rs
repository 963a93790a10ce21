//! The values `trellis proxy-init` takes: ports, port lists with ranges, and CIDR lists.
//! Each parser says what is wrong with the value; the CLI puts the flag's name in front.

use std::fmt;
use std::net::IpAddr;

/// A TCP port, or an inclusive range of them (`8000-8100`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for PortRange {
    /// iptables' `multiport` syntax: `80` or `8000:8100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last { write!(f, "{}", self.first) } else { write!(f, "{}:{}", self.first, self.last) }
    }
}

impl PortRange {
    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// A port, 1–65535.
pub fn port(s: &str) -> Result<u16, String> {
    let s = s.trim();
    match s.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        Ok(p) => Err(format!("{p} is not a port (1-65535)")),
        Err(_) => Err(format!("\"{s}\" is not a port (1-65535)")),
    }
}

/// Ports and ranges separated by commas: `22,8000-8100`. Empty means none.
pub fn ports(s: &str) -> Result<Vec<PortRange>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim) {
        if item.is_empty() {
            if s.trim().is_empty() {
                continue;
            }
            return Err(format!("\"{s}\" has an empty entry"));
        }
        let range = match item.split_once('-') {
            Some((a, b)) => {
                let (first, last) = (port(a)?, port(b)?);
                if first > last {
                    return Err(format!("\"{item}\": the range runs backwards"));
                }
                PortRange { first, last }
            }
            None => {
                let p = port(item)?;
                PortRange { first: p, last: p }
            }
        };
        out.push(range);
    }
    Ok(out)
}

/// An IPv4 or IPv6 network: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits cleared).
    pub addr: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }
}

/// One CIDR; a bare address is a network of one.
pub fn cidr(s: &str) -> Result<Cidr, String> {
    let s = s.trim();
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| format!("\"{s}\" is not a CIDR (e.g. 10.0.0.0/8, fd00::/8)"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("\"{s}\": the prefix length must be 0-{max}")),
        },
    };
    let addr = match addr {
        IpAddr::V4(a) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
            IpAddr::from((u32::from(a) & mask).to_be_bytes())
        }
        IpAddr::V6(a) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
            IpAddr::from((u128::from(a) & mask).to_be_bytes())
        }
    };
    Ok(Cidr { addr, prefix })
}

/// CIDRs separated by commas. Empty means none.
pub fn cidrs(s: &str) -> Result<Vec<Cidr>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|item| if item.trim().is_empty() { Err(format!("\"{s}\" has an empty entry")) } else { cidr(item) })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ports_and_ranges() {
        assert_eq!(port("4143"), Ok(4143));
        for bad in ["0", "65536", "70000", "-1", "http", ""] {
            assert!(port(bad).is_err(), "{bad}");
        }
        let r = ports("22, 8000-8100,443").unwrap();
        assert_eq!(r.iter().map(ToString::to_string).collect::<Vec<_>>(), ["22", "8000:8100", "443"]);
        assert!(r[1].contains(8050) && !r[1].contains(8101));
        assert_eq!(ports("").unwrap(), vec![]);
        for bad in ["80,,90", "9000-8000", "1-70000", "a-b", "80,"] {
            assert!(ports(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_are_checked_and_normalized() {
        assert_eq!(cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(cidr("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(cidr("fd00::1/8").unwrap().to_string(), "fd00::/8");
        assert_eq!(cidr("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert!(cidr("fd00::/64").unwrap().is_ipv6());
        for bad in ["10.0.0.0/33", "10.0.0/8", "fd00::/129", "10.0.0.0/x", "host/8", ""] {
            assert!(cidr(bad).is_err(), "{bad}");
        }
        assert_eq!(cidrs("10.0.0.0/8, 192.168.0.0/16").unwrap().len(), 2);
        assert!(cidrs("10.0.0.0/8,,").is_err());
        assert_eq!(cidrs(" ").unwrap(), vec![]);
    }
}
