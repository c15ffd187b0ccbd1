//! A leaf: Unix users by uid, as the local doors name them (the sendmail door's real
//! uid, a maildrop file's owner, a loopback client's socket). Read from `/proc`,
//! `/etc/passwd` and the kernel's `sock_diag` (through rustix): no unsafe call.

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
/// `from`, as identd finds it. Asked of the kernel for that one socket by its four
/// addresses (`sock_diag`, as `ss` does); where that cannot be asked (no netlink in a
/// sandbox), read from `/proc/net/tcp` or `tcp6`, which lists every socket of the host.
/// Blocking: call it off the async runtime. None when the connection is not found
/// (another network namespace, a closed socket).
pub fn tcp_owner(from: std::net::SocketAddr, to: std::net::SocketAddr) -> Option<u32> {
    sock_diag_owner(from, to).unwrap_or_else(|_| proc_owner(from, to))
}

/// `NETLINK_SOCK_DIAG`'s `SOCK_DIAG_BY_FAMILY` request for the one TCP socket whose
/// local end is `from` and remote end `to` (`inet_diag_req_v2`, linux/inet_diag.h): the
/// kernel looks it up in its hash, so the cost does not grow with the host's sockets
/// (a listing of `/proc/net/tcp` with the TIME_WAIT entries of a connection-per-message
/// load cost about 6 ms of CPU per connection). Ok(None): the kernel has no such socket;
/// Err: the question could not be asked.
fn sock_diag_owner(
    from: std::net::SocketAddr,
    to: std::net::SocketAddr,
) -> std::io::Result<Option<u32>> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, netlink};
    const NLMSG_ERROR: u16 = 2;
    let Some((req, id)) = diag_request(from, to) else {
        return Ok(None);
    };
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    rustix::net::sockopt::set_socket_timeout(
        &fd,
        rustix::net::sockopt::Timeout::Recv,
        Some(std::time::Duration::from_secs(1)),
    )?;
    rustix::net::sendto(
        &fd,
        &req,
        rustix::net::SendFlags::empty(),
        &netlink::SocketAddrNetlink::new(0, 0),
    )?;
    let mut buf = [0u8; 1024];
    let (n, _) = rustix::net::recv(&fd, &mut buf[..], rustix::net::RecvFlags::empty())?;
    let answer = &buf[..n];
    let u16_at = |i: usize| {
        answer
            .get(i..i + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let u32_at = |i: usize| {
        answer
            .get(i..i + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    match u16_at(4) {
        // inet_diag_msg after the 16-byte header: family, state, timer, retrans, the
        // sockid (48 bytes: its ports and addresses must be those asked about),
        // expires, rqueue, wqueue, then the uid.
        Some(SOCK_DIAG_BY_FAMILY) if answer.get(20..56) == Some(&id[..36]) => Ok(u32_at(16 + 64)),
        Some(SOCK_DIAG_BY_FAMILY) => Ok(None),
        // An error answer: ENOENT is "no such socket"; anything else means the
        // question could not be asked here.
        Some(NLMSG_ERROR) => match u32_at(16).map(|e| e as i32) {
            Some(e) if -e == rustix::io::Errno::NOENT.raw_os_error() => Ok(None),
            _ => Err(std::io::Error::other("sock_diag refused the question")),
        },
        _ => Err(std::io::Error::other("sock_diag gave no answer")),
    }
}

/// `SOCK_DIAG_BY_FAMILY`'s message type.
const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// The netlink request (`nlmsghdr` + `inet_diag_req_v2`) for the TCP socket whose local
/// end is `from` and remote end `to`, and its `inet_diag_sockid`; None for a pair of an
/// IPv4 and an IPv6 address.
fn diag_request(
    from: std::net::SocketAddr,
    to: std::net::SocketAddr,
) -> Option<(Vec<u8>, Vec<u8>)> {
    use rustix::net::AddressFamily;
    const NLM_F_REQUEST: u16 = 1;
    let (family, src, dst) = match (from.ip(), to.ip()) {
        (std::net::IpAddr::V4(f), std::net::IpAddr::V4(t)) => {
            let mut a = [0u8; 16];
            let mut b = [0u8; 16];
            a[..4].copy_from_slice(&f.octets());
            b[..4].copy_from_slice(&t.octets());
            (AddressFamily::INET, a, b)
        }
        (std::net::IpAddr::V6(f), std::net::IpAddr::V6(t)) => {
            (AddressFamily::INET6, f.octets(), t.octets())
        }
        _ => return None,
    };
    // inet_diag_sockid: ports and addresses in network order, no interface, no cookie.
    let mut id = Vec::with_capacity(48);
    id.extend_from_slice(&from.port().to_be_bytes());
    id.extend_from_slice(&to.port().to_be_bytes());
    id.extend_from_slice(&src);
    id.extend_from_slice(&dst);
    id.extend_from_slice(&0u32.to_ne_bytes());
    id.extend_from_slice(&[0xff; 8]);
    let mut req = Vec::with_capacity(72);
    req.extend_from_slice(&72u32.to_ne_bytes()); // nlmsg_len
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it in
    // sdiag_family is one byte; AF_INET and AF_INET6 fit it.
    req.extend_from_slice(&[family.as_raw() as u8, 6 /* IPPROTO_TCP */, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&id);
    Some((req, id))
}

/// [`tcp_owner`] from the listing of every socket in `/proc/net/tcp` or `tcp6`.
fn proc_owner(from: std::net::SocketAddr, to: std::net::SocketAddr) -> Option<u32> {
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
        // Asked of the kernel, and read from the listing: the same answer.
        let to = l.local_addr().unwrap();
        assert_eq!(sock_diag_owner(peer, to).unwrap(), real_uid());
        assert_eq!(proc_owner(peer, to), real_uid());
        // No such connection: None, not an error and not somebody else.
        let gone: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(sock_diag_owner(gone, to).unwrap(), None);
        let l6 = std::net::TcpListener::bind("[::1]:0");
        if let Ok(l6) = l6 {
            let c6 = std::net::TcpStream::connect(l6.local_addr().unwrap()).unwrap();
            let (_s6, peer6) = l6.accept().unwrap();
            assert_eq!(peer6, c6.local_addr().unwrap());
            assert_eq!(
                sock_diag_owner(peer6, l6.local_addr().unwrap()).unwrap(),
                real_uid()
            );
        }
    }
}
