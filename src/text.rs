//! Words shared by the CLI, the pages and the log.

/// `n` and its noun, singular for one: `1 message`, `3 messages`. The noun is given in
/// the singular and takes an `s` (every noun mailgate counts does).
pub fn counted(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_is_singular() {
        assert_eq!(super::counted(1u64, "message"), "1 message");
        assert_eq!(super::counted(0u64, "message"), "0 messages");
        assert_eq!(super::counted(2u32, "recipient"), "2 recipients");
    }
}
