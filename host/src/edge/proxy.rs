//! Client addresses behind proxies: the PROXY protocol header a load balancer puts before a
//! connection's first byte, and the `Forwarded` / `X-Forwarded-For` headers a reverse proxy
//! adds to each request. Both are believed only from peers the operator trusts, since anyone
//! else can write them.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use axum::http::{HeaderMap, header};
use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult as _, v1, v2};
use tokio::{io::AsyncReadExt as _, net::TcpStream};

/// Hops of a forwarding header looked at, from the right; a longer chain is cut (its left part
/// is what a client wrote, never needed to find the right-most untrusted hop behind a few
/// proxies).
const MAX_HOPS: usize = 32;
/// The longest PROXY header read: v1 is at most 107 bytes; v2 is 16 bytes and its addresses
/// (216 for Unix sockets) plus TLVs, which cloud balancers keep to a few hundred bytes.
const MAX_PROXY_HEADER: usize = 4096;

/// The peers whose word on the client's address is believed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Proxies {
    nets: Vec<IpNet>,
}

impl Proxies {
    /// Trust these addresses and networks.
    pub(crate) fn new(nets: Vec<IpNet>) -> Self {
        Self { nets }
    }

    /// Whether none is trusted.
    pub(crate) fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is a trusted proxy (an IPv4 address mapped into IPv6 counts as itself).
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client behind a request that came from `peer`: `peer` itself unless it is trusted;
    /// from a trusted peer, the right-most hop of `Forwarded` (else `X-Forwarded-For`) that is
    /// not trusted. A hop that is not an address (`unknown`, an obfuscated name) ends the walk
    /// at the last address known, so a client cannot choose whose budget it spends.
    pub(crate) fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !self.trusts(peer.ip()) {
            return peer;
        }
        let forwarded = hops(headers, header::FORWARDED, forwarded_for);
        let hops = if forwarded.is_empty() {
            hops(headers, "x-forwarded-for", |hop| Some(hop.trim()))
        } else {
            forwarded
        };
        let mut client = peer;
        for hop in hops.iter().rev().take(MAX_HOPS) {
            let Some(addr) = parse_hop(hop) else { break };
            client = SocketAddr::new(addr, 0);
            if !self.trusts(addr) {
                break;
            }
        }
        client
    }
}

/// The comma-separated elements of every `name` header line, in order, each mapped by `pick`.
fn hops<'h>(
    headers: &'h HeaderMap,
    name: impl axum::http::header::AsHeaderName,
    pick: fn(&'h str) -> Option<&'h str>,
) -> Vec<&'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(','))
        .filter_map(pick)
        .collect()
}

/// The `for=` parameter of one `Forwarded` element (RFC 7239), unquoted.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then(|| value.trim().trim_matches('"'))
    })
}

/// An address out of a hop: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(addr) = hop.parse::<IpAddr>() {
        return Some(addr.to_canonical());
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    hop.strip_prefix('[')?.split(']').next()?.parse::<IpAddr>().ok().map(|a| a.to_canonical())
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyHeaderError {
    /// Not sent in time.
    #[error("no PROXY header within the header deadline")]
    Timeout,
    /// The peer closed before sending one.
    #[error("the connection closed before its PROXY header")]
    Closed,
    /// Not a PROXY header, or a broken one.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// Longer than any real balancer sends.
    #[error("PROXY header over {MAX_PROXY_HEADER} bytes")]
    TooLong,
    /// Reading failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// What a PROXY header said: the client's address (none for a `LOCAL` or `UNKNOWN` header,
/// the balancer's own health check), and the bytes read after it, which belong to the request.
#[derive(Debug)]
pub(crate) struct ProxyHeader {
    pub client: Option<SocketAddr>,
    pub rest: Vec<u8>,
}

/// Read a PROXY header (v1 or v2) from the start of `stream` within `deadline`.
pub(crate) async fn read_header(
    stream: &mut TcpStream,
    deadline: Duration,
) -> Result<ProxyHeader, ProxyHeaderError> {
    let read = async {
        let mut buf = Vec::with_capacity(256);
        loop {
            let mut chunk = [0u8; 512];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ProxyHeaderError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(header) = parse(&buf)? {
                return Ok(header);
            }
            if buf.len() >= MAX_PROXY_HEADER {
                return Err(ProxyHeaderError::TooLong);
            }
        }
    };
    tokio::time::timeout(deadline, read).await.map_err(|_| ProxyHeaderError::Timeout)?
}

/// A whole header at the start of `buf`, `None` while it may still be incomplete.
fn parse(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    let result = HeaderResult::parse(buf);
    // A v1 header ends at its line's end: one still "missing" a part once the line is whole
    // is broken, not incomplete.
    let v1_line_ended =
        matches!(result, HeaderResult::V1(_)) && buf.windows(2).any(|w| w == b"\r\n");
    if result.is_incomplete() && !v1_line_ended {
        return Ok(None);
    }
    let (len, client) = match result {
        HeaderResult::V1(Ok(header)) => {
            let client = match header.addresses {
                v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Unknown => None,
            };
            (header.header.len(), client)
        }
        HeaderResult::V2(Ok(header)) => {
            let client = match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                _ => None,
            };
            (header.len(), client)
        }
        HeaderResult::V1(Err(error)) => {
            return Err(ProxyHeaderError::Malformed(error.to_string()));
        }
        HeaderResult::V2(Err(error)) => return Err(ProxyHeaderError::Malformed(error.to_string())),
    };
    let client = client.map(|c| SocketAddr::new(c.ip().to_canonical(), c.port()));
    Ok(Some(ProxyHeader { client, rest: buf[len..].to_vec() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> Proxies {
        Proxies::new(list.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn headers(lines: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_hop_and_only_from_a_trusted_peer() {
        let trusted = proxies(&["10.0.0.0/8", "127.0.0.1/32"]);
        let proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let spoofed = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.9")]);
        assert_eq!(trusted.client(proxy, &spoofed).ip().to_string(), "203.0.113.7");
        let stranger: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        assert_eq!(trusted.client(stranger, &spoofed), stranger);
        let two_lines =
            headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "192.0.2.5")]);
        assert_eq!(trusted.client(proxy, &two_lines).ip().to_string(), "192.0.2.5");
        assert_eq!(trusted.client(proxy, &HeaderMap::new()), proxy);
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_reads_quotes_ports_and_brackets() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let both = headers(&[
            ("forwarded", r#"for=6.6.6.6, for="[2001:db8::17]:4711";proto=https, For=10.0.0.2"#),
            ("x-forwarded-for", "192.0.2.9"),
        ]);
        assert_eq!(trusted.client(proxy, &both).ip().to_string(), "2001:db8::17");
        let unknown = headers(&[("forwarded", "for=192.0.2.1, for=unknown")]);
        assert_eq!(trusted.client(proxy, &unknown), proxy, "garbage is not a client");
    }

    #[test]
    fn proxy_headers_v1_and_v2_name_the_client_and_keep_the_bytes_after_them() {
        let v1 = b"PROXY TCP4 192.0.2.10 10.0.0.1 40000 6001\r\nGET / HTTP/1.1\r\n";
        let header = parse(v1).unwrap().unwrap();
        assert_eq!(header.client, Some("192.0.2.10:40000".parse().unwrap()));
        assert_eq!(header.rest, b"GET / HTTP/1.1\r\n");
        assert!(parse(b"PROXY TCP4 192.0.2.10").unwrap().is_none(), "incomplete");
        assert!(parse(b"GET / HTTP/1.1\r\n\r\n").is_err(), "no header");
        assert!(parse(b"PROXY TCP4 banana\r\n").is_err(), "a broken line");
        assert!(parse(b"PROXY TCP4 192.0.2.10 10.0.0.1 40000\r\n").is_err(), "a short line");

        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 7, 10, 0, 0, 1, 0x9c, 0x40, 0x17, 0x71,
        ]);
        v2.extend_from_slice(b"GET");
        let header = parse(&v2).unwrap().unwrap();
        assert_eq!(header.client, Some("198.51.100.7:40000".parse().unwrap()));
        assert_eq!(header.rest, b"GET");
        let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).unwrap().unwrap().client, None);
    }
}
