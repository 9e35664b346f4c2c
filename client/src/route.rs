//! Which local address `veil join` sends media from: the one this machine uses to reach the
//! server (the kernel's routing table answers, through a UDP socket that is connected but
//! sends nothing), so that a call to another machine does not offer a loopback candidate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The host and port of the first URL of a comma-separated list (`http://h:p`, `https://h`,
/// `[v6]:p`); the port defaults to the scheme's.
pub(crate) fn first_host(urls: &str) -> Result<(String, u16), String> {
    let url = urls.split(',').next().unwrap_or_default().trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL (http://host:port or https://host:port)"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let default_port = if scheme == "https" { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: an IPv6 host needs its closing ]"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("{url:?}: {p:?} is not a port"))?,
        None => default_port,
    };
    if host.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    Ok((host.to_owned(), port))
}

/// The local address the kernel would send from to reach the first server of `urls`.
pub(crate) async fn local_ip_towards(urls: &str) -> Result<IpAddr, String> {
    let (host, port) = first_host(urls)?;
    let server: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))?;
    let any = if server.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    let sock = std::net::UdpSocket::bind((any, 0)).map_err(|e| e.to_string())?;
    sock.connect(server)
        .map_err(|e| format!("no route to {host} ({server}): {e}"))?;
    sock.local_addr().map(|a| a.ip()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_urls_host_and_port_with_the_schemes_default() {
        let ok = |u: &str| first_host(u).unwrap();
        assert_eq!(ok("http://127.0.0.1:7443"), ("127.0.0.1".into(), 7443));
        assert_eq!(ok("https://veil.example"), ("veil.example".into(), 443));
        assert_eq!(ok("http://h:1/x,http://other:2"), ("h".into(), 1));
        assert_eq!(ok("https://[::1]:9"), ("::1".into(), 9));
        assert!(first_host("127.0.0.1:7443").is_err());
        assert!(first_host("http://h:port").is_err());
        assert!(first_host("http://:7443").is_err());
    }

    #[tokio::test]
    async fn a_loopback_server_is_reached_from_loopback() {
        let ip = local_ip_towards("http://127.0.0.1:7443").await.unwrap();
        assert_eq!(ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
}
