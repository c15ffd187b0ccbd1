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
