//! A leaf: Unix users by uid, as the local doors name them (the sendmail door's real
//! uid, a maildrop file's owner). Read from `/proc` and `/etc/passwd`: no unsafe call.

/// The real uid of this process (`/proc/self/status`, its `Uid:` line's first number).
pub fn real_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The name of `uid` in /etc/passwd, else `uid<N>`: never a name a file or a variable
/// chose.
pub fn user_name(uid: u32) -> String {
    let want = uid.to_string();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == want).then(|| f[0].to_string())
            })
        })
        .filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
        .unwrap_or_else(|| format!("uid{uid}"))
}

/// The uid that owns the local end of a TCP connection this host made to `to` from
/// `from` (as identd finds it: `/proc/net/tcp` or `tcp6`, the line whose local address is
/// `from` and remote address `to`). Blocking: call it off the async runtime. None when
/// the connection is not found (another network namespace, a closed socket).
pub fn tcp_owner(from: std::net::SocketAddr, to: std::net::SocketAddr) -> Option<u32> {
    let table = if from.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table).ok()?;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 7 && proc_addr(f[1])? == from && proc_addr(f[2])? == to)
            .then(|| f[7].parse().ok())
            .flatten()
    })
}

/// An address as `/proc/net/tcp` writes it: the IP in host-order 32-bit words (hex), a
/// colon, the port (hex).
fn proc_addr(s: &str) -> Option<std::net::SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_le_bytes);
    let ip: std::net::IpAddr = match ip.len() {
        8 => std::net::Ipv4Addr::from(word(ip)?).into(),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(&ip[i * 8..i * 8 + 8])?);
            }
            std::net::Ipv6Addr::from(b).into()
        }
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_addresses() {
        assert_eq!(
            proc_addr("0100007F:09DD"),
            Some("127.0.0.1:2525".parse().unwrap())
        );
        assert_eq!(
            proc_addr("00000000000000000000000001000000:1F90"),
            Some("[::1]:8080".parse().unwrap())
        );
    }

    #[test]
    fn the_owner_of_a_loopback_connection_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        assert_eq!(tcp_owner(peer, l.local_addr().unwrap()), real_uid());
    }
}
