//! Who sent a request: the client IP (from the socket, or from a configured number of trusted
//! `X-Forwarded-For` hops), its /24 or /64 prefix, its ASN and country from a prefix table, and
//! an API key header.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, bail};
use ipnet::IpNet;

/// The identity of one request's sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub ip: IpAddr,
    /// The /24 (IPv4) or /64 (IPv6) network of `ip`.
    pub prefix: IpNet,
    pub asn: Option<u32>,
    pub country: Option<Country>,
    pub api_key: Option<String>,
}

/// An ISO 3166-1 alpha-2 code, stored inline so a lookup allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// Two ASCII letters, upper-cased; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Self([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The two ASCII letters.
    pub fn bytes(&self) -> [u8; 2] {
        self.0
    }

    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The client IP of a request.
///
/// With `trusted_hops` = 0 it is the socket peer. With N > 0, N proxies in front of the edge
/// each append the address they saw to `X-Forwarded-For`, so the N-th entry from the right is
/// the one the outermost trusted proxy saw; entries left of it are the client's own claims and
/// are ignored. A header too short or unparseable falls back to the peer: the chain is not the
/// one configured, and a claim is worth less than the socket.
pub fn client_ip(peer: IpAddr, forwarded_for: &[&[u8]], trusted_hops: usize) -> IpAddr {
    // The usual case, one trusted proxy and an IPv4 client, in one backward pass over the
    // header's end instead of a split, a trim and a parse.
    if trusted_hops == 1
        && let Some(v4) = forwarded_for.last().and_then(|v| last_entry_dotted_quad(v))
    {
        return IpAddr::V4(v4);
    }
    nth_forwarded_from_right(peer, forwarded_for, trusted_hops)
}

/// [`client_ip`] for any chain and entry: the N-th entry from the right, any address form.
fn nth_forwarded_from_right(peer: IpAddr, forwarded_for: &[&[u8]], trusted_hops: usize) -> IpAddr {
    if trusted_hops == 0 {
        return peer;
    }
    // Several headers are one list, in order.
    let mut seen = 0;
    for value in forwarded_for.iter().rev() {
        for entry in value.rsplit(|&b| b == b',') {
            seen += 1;
            if seen == trusted_hops {
                return parse_forwarded_entry(entry.trim_ascii()).unwrap_or(peer);
            }
        }
    }
    peer
}

/// The last comma-separated entry of an `X-Forwarded-For` value, if it is a plain dotted
/// quad (with blanks around it allowed); `None` for anything else, which the general path
/// then reads.
fn last_entry_dotted_quad(value: &[u8]) -> Option<Ipv4Addr> {
    let value = value.trim_ascii_end();
    let (v4, start) = dotted_quad_at_end(value)?;
    matches!(value[..start].trim_ascii_end().last(), None | Some(b',')).then_some(v4)
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`, `[::1]:80`).
fn parse_forwarded_entry(entry: &[u8]) -> Option<IpAddr> {
    if let Some((v4, 0)) = dotted_quad_at_end(entry) {
        return Some(IpAddr::V4(v4));
    }
    let entry = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Ok(sa) = entry.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')).and_then(|e| e.parse().ok())
}

/// A plain dotted-quad IPv4 address that ends where `b` ends, and the index it starts at,
/// read backwards in one pass: the standard parser costs more than the rest of the
/// per-request work on the address, and reading from the end finds the last entry of a list
/// without splitting it first. It accepts a subset of what the standard parser does (four
/// decimal octets, no leading zeros); a caller that wants the whole of `b` to be the address
/// checks that it starts at 0.
fn dotted_quad_at_end(b: &[u8]) -> Option<(Ipv4Addr, usize)> {
    // The octet being read: its value, the place value of its next digit, its leftmost digit.
    let (mut v, mut place, mut lead) = (0u32, 1u32, 0u8);
    // The octets read, from the right.
    let (mut addr, mut done) = (0u32, 0u32);
    // An octet has a digit, is at most 255 and has no leading zero.
    let valid = |v: u32, place: u32, lead: u8| place > 1 && v <= 255 && (place == 10 || lead != b'0');
    let mut i = b.len();
    while i > 0 {
        match b[i - 1] {
            c @ b'0'..=b'9' if place < 1000 => {
                v += u32::from(c - b'0') * place;
                place *= 10;
                lead = c;
            }
            b'.' if done < 3 => {
                if !valid(v, place, lead) {
                    return None;
                }
                addr |= v << (8 * done);
                (v, place, done) = (0, 1, done + 1);
            }
            _ => break,
        }
        i -= 1;
    }
    (done == 3 && valid(v, place, lead)).then(|| (Ipv4Addr::from(addr | v << 24), i))
}

/// An address as one integer, for keys and hashes: IPv4 as its IPv4-mapped IPv6 form, so
/// that `1.2.3.4` and `::ffff:1.2.3.4` (how a dual-stack socket reports it) are one source.
pub fn ip_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The network a source's aggregate is counted under: /24 for IPv4, /64 for IPv6.
pub fn prefix_of(ip: IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(v4) => {
            let net = Ipv4Addr::from(u32::from(v4) & 0xffff_ff00);
            IpNet::V4(ipnet::Ipv4Net::new(net, 24).expect("24 is a valid IPv4 prefix length"))
        }
        IpAddr::V6(v6) => {
            let net = Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1));
            IpNet::V6(ipnet::Ipv6Net::new(net, 64).expect("64 is a valid IPv6 prefix length"))
        }
    }
}

/// What the prefix table says of an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub asn: Option<u32>,
    pub country: Option<Country>,
}

/// Address ranges with their ASN and country, looked up by binary search.
///
/// The file has one range per line, `CIDR,ASN,COUNTRY` (ASN 0 or empty and country empty or
/// `None` mean unknown); `#` starts a comment. Ranges must not overlap; the most specific
/// entry is not searched for.
#[derive(Clone, Debug, Default)]
pub struct PrefixTable {
    v4: Vec<(u32, u32, Origin)>,
    v6: Vec<(u128, u128, Origin)>,
    /// For each IPv4 /16, the index of the first range that ends in it or later: a lookup
    /// searches only the ranges near the address, not the whole table.
    v4_index: Vec<u32>,
}

impl PrefixTable {
    /// Loads a table file, naming the line of any error.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in prefix table {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut table = Self::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [cidr, asn, country] = fields[..] else {
                bail!("line {}: expected CIDR,ASN,COUNTRY, got {line:?}", n + 1);
            };
            let net: IpNet = cidr.parse().with_context(|| format!("line {}: {cidr:?} is not a CIDR", n + 1))?;
            let asn = match asn {
                "" | "0" => None,
                a => Some(a.parse::<u32>().with_context(|| format!("line {}: ASN {a:?} is not a number", n + 1))?),
            };
            let country = match country {
                "" | "None" | "ZZ" => None,
                c => Some(Country::parse(c).with_context(|| format!("line {}: {c:?} is not a country code", n + 1))?),
            };
            let origin = Origin { asn, country };
            match net {
                IpNet::V4(n4) => table.v4.push((u32::from(n4.network()), u32::from(n4.broadcast()), origin)),
                IpNet::V6(n6) => table.v6.push((u128::from(n6.network()), u128::from(n6.broadcast()), origin)),
            }
        }
        table.v4.sort_by_key(|r| r.0);
        table.v6.sort_by_key(|r| r.0);
        check_disjoint(&table.v4)?;
        check_disjoint(&table.v6)?;
        if !table.v4.is_empty() {
            table.v4_index =
                (0..=u16::MAX as u32).map(|hi| table.v4.partition_point(|r| r.1 < hi << 16) as u32).collect();
        }
        Ok(table)
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn lookup(&self, ip: IpAddr) -> Origin {
        match ip {
            IpAddr::V4(v4) => {
                let x = u32::from(v4);
                let from = self.v4_index.get((x >> 16) as usize).map_or(0, |&i| i as usize);
                let to = self
                    .v4_index
                    .get((x >> 16) as usize + 1)
                    .map_or(self.v4.len(), |&i| (i as usize + 1).min(self.v4.len()));
                find(&self.v4[from..to], x)
            }
            IpAddr::V6(v6) => find(&self.v6, u128::from(v6)),
        }
    }
}

fn find<T: Ord + Copy>(ranges: &[(T, T, Origin)], x: T) -> Origin {
    let i = ranges.partition_point(|r| r.0 <= x);
    match i.checked_sub(1).map(|i| ranges[i]) {
        Some((_, end, origin)) if x <= end => origin,
        _ => Origin { asn: None, country: None },
    }
}

fn check_disjoint<T: Ord + Copy + fmt::Debug>(ranges: &[(T, T, Origin)]) -> anyhow::Result<()> {
    for w in ranges.windows(2) {
        if w[1].0 <= w[0].1 {
            bail!("overlapping ranges starting at {:?} and {:?}", w[0].0, w[1].0);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_trusts_only_the_configured_hops() {
        let peer = ip("127.0.0.1");
        let xff: &[&[u8]] = &[b"6.6.6.6, 198.51.100.7", b"10.0.0.2"];
        assert_eq!(client_ip(peer, xff, 0), peer, "no trusted hops: the socket");
        assert_eq!(client_ip(peer, xff, 1), ip("10.0.0.2"));
        assert_eq!(client_ip(peer, xff, 2), ip("198.51.100.7"));
        assert_eq!(client_ip(peer, xff, 3), ip("6.6.6.6"));
        assert_eq!(client_ip(peer, xff, 4), peer, "a chain shorter than configured falls back");
        assert_eq!(client_ip(peer, &[b"garbage"], 1), peer);
        assert_eq!(client_ip(peer, &[b"[2001:db8::1]:443"], 1), ip("2001:db8::1"));
        assert_eq!(client_ip(peer, &[b"192.0.2.1:5678"], 1), ip("192.0.2.1"));
        assert_eq!(client_ip(peer, &[&[0xff, 0xfe]], 1), peer, "not UTF-8");
        assert_eq!(client_ip(peer, &[], 1), peer);
    }

    /// The dotted-quad reader on the whole of `b`.
    fn dotted_quad(b: &[u8]) -> Option<Ipv4Addr> {
        dotted_quad_at_end(b).filter(|(_, start)| *start == 0).map(|(v4, _)| v4)
    }

    #[test]
    fn the_dotted_quad_reader_agrees_with_the_standard_parser() {
        for ok in ["0.0.0.0", "255.255.255.255", "192.0.2.1", "10.200.3.40"] {
            assert_eq!(dotted_quad(ok.as_bytes()), Some(ok.parse().unwrap()), "{ok}");
        }
        for other in
            ["256.0.0.1", "01.2.3.4", "1.2.3", "1.2.3.4.5", "1.2.3.4:80", "1..2.3", "1.2.3.4 ", "::1", "1.2.3.", ""]
        {
            assert_eq!(dotted_quad(other.as_bytes()), None, "{other}");
        }
        assert_eq!(dotted_quad_at_end(b"6.6.6.6, 10.0.0.2"), Some((Ipv4Addr::new(10, 0, 0, 2), 9)));
        assert_eq!(last_entry_dotted_quad(b"6.6.6.6 ,\t10.0.0.2 "), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(last_entry_dotted_quad(b"6.6.6.6 10.0.0.2"), None, "two addresses, no comma");
        assert_eq!(last_entry_dotted_quad(b"1234.0.0.2"), None, "a fourth digit");
    }

    proptest::proptest! {
        #[test]
        fn the_dotted_quad_reader_never_disagrees(
            bytes in proptest::collection::vec(proptest::sample::select(b"0123456789.:a ".to_vec()), 0..18),
            addr: [u8; 4],
        ) {
            // Whatever it accepts, the standard parser reads the same; every address it
            // prints, it reads.
            if let Some(v4) = dotted_quad(&bytes) {
                let text = std::str::from_utf8(&bytes).unwrap();
                proptest::prop_assert_eq!(text.parse::<Ipv4Addr>().ok(), Some(v4));
            }
            let printed = Ipv4Addr::from(addr).to_string();
            proptest::prop_assert_eq!(dotted_quad(printed.as_bytes()), Some(Ipv4Addr::from(addr)));
        }

        /// On digits and dots alone, it accepts exactly what the standard parser accepts.
        #[test]
        fn the_dotted_quad_reader_accepts_what_the_standard_parser_does(
            groups in proptest::collection::vec(proptest::string::string_regex("[0-9]{0,4}").unwrap(), 1..6),
            prefix in proptest::string::string_regex("[0-9., ]{0,12}").unwrap(),
        ) {
            let text = groups.join(".");
            proptest::prop_assert_eq!(dotted_quad(text.as_bytes()), text.parse::<Ipv4Addr>().ok(), "{}", text);
            // Ending a longer value: the address and where it starts, when a separator precedes it.
            let long = format!("{prefix}{text}");
            if let (Ok(v4), Some(b' ' | b',') | None) = (text.parse::<Ipv4Addr>(), prefix.bytes().last()) {
                proptest::prop_assert_eq!(dotted_quad_at_end(long.as_bytes()), Some((v4, prefix.len())));
            }
        }

        #[test]
        fn the_one_pass_path_finds_what_the_general_one_does(
            bytes in proptest::collection::vec(proptest::sample::select(b"0123456789.,:a \t".to_vec()), 0..40),
        ) {
            let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
            proptest::prop_assert_eq!(client_ip(peer, &[&bytes], 1), nth_forwarded_from_right(peer, &[&bytes], 1));
        }
    }

    #[test]
    fn prefixes_are_slash_24_and_slash_64() {
        assert_eq!(prefix_of(ip("198.51.100.77")).to_string(), "198.51.100.0/24");
        assert_eq!(prefix_of(ip("2001:db8:1:2:3:4:5:6")).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn table_lookup_and_errors() {
        let t = PrefixTable::parse(
            "# cidr,asn,country\n198.51.100.0/24,64500,de\n203.0.113.0/25, 64501 ,US\n2001:db8::/32,0,\n",
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.lookup(ip("198.51.100.9")), Origin { asn: Some(64500), country: Country::parse("DE") });
        assert_eq!(t.lookup(ip("203.0.113.127")).asn, Some(64501));
        assert_eq!(t.lookup(ip("203.0.113.128")).asn, None, "just past the range");
        assert_eq!(t.lookup(ip("2001:db8::5")), Origin { asn: None, country: None });
        assert_eq!(t.lookup(ip("8.8.8.8")).asn, None);
        assert_eq!(t.lookup(ip("0.0.0.0")).asn, None);
        assert_eq!(t.lookup(ip("255.255.255.255")).asn, None);

        let err = PrefixTable::parse("1.2.3.0/24,x,DE").unwrap_err();
        assert!(format!("{err:#}").contains("line 1: ASN \"x\""), "{err:#}");
        let err = PrefixTable::parse("ok\n").unwrap_err();
        assert!(format!("{err:#}").contains("expected CIDR,ASN,COUNTRY"), "{err:#}");
        let err = PrefixTable::parse("10.0.0.0/8,1,DE\n10.1.0.0/16,2,FR").unwrap_err();
        assert!(format!("{err:#}").contains("overlapping"), "{err:#}");
    }

    proptest::proptest! {
        /// The /16 index finds exactly what a search of the whole table finds.
        #[test]
        fn indexed_lookup_matches_a_full_search(
            starts in proptest::collection::btree_set(0u32..1 << 20, 1..200),
            lens in proptest::collection::vec(12u8..=32, 200),
            probes in proptest::collection::vec(proptest::prelude::any::<u32>(), 200),
        ) {
            // Ranges of many sizes, starting on distinct /24s spread over the space; those
            // that would overlap the previous one are dropped.
            let mut text = String::new();
            let mut last_end: Option<u32> = None;
            for (i, s) in starts.iter().enumerate() {
                let start = s << 12;
                let net = ipnet::Ipv4Net::new(Ipv4Addr::from(start), lens[i]).unwrap().trunc();
                let (a, b) = (u32::from(net.network()), u32::from(net.broadcast()));
                if last_end.is_some_and(|e| a <= e) {
                    continue;
                }
                last_end = Some(b);
                text.push_str(&format!("{net},{},DE\n", i + 1));
            }
            let t = PrefixTable::parse(&text).unwrap();
            for p in probes.iter().copied().chain(t.v4.iter().flat_map(|r| [r.0, r.1, r.1.wrapping_add(1)])) {
                proptest::prop_assert_eq!(t.lookup(IpAddr::V4(Ipv4Addr::from(p))), find(&t.v4, p));
            }
        }
    }

    #[test]
    fn country_codes() {
        assert_eq!(Country::parse("de").unwrap().as_str(), "DE");
        assert!(Country::parse("DEU").is_none());
        assert!(Country::parse("1A").is_none());
    }
}
