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

/// A text with `code` spans (the diagnosis catalogue's fixes) for a terminal or a
/// plain-text mail: the backticks go, the words stay (`mailgate retry ID` reads
/// mailgate retry ID). Unbalanced backticks are left as they are.
pub fn plain(s: &str) -> String {
    if s.matches('`').count().is_multiple_of(2) {
        s.replace('`', "")
    } else {
        s.to_string()
    }
}

/// A size in words: `900 bytes`, `12 KB`, `19.6 MB` (KB and MB are powers of 1024, as
/// `max_message_size` reads them).
pub fn size(n: u64) -> String {
    if n >= 1024 * 1024 {
        format!("{:.1} MB", n as f64 / (1024.0 * 1024.0))
    } else if n >= 1024 {
        format!("{} KB", n / 1024)
    } else {
        counted(n, "byte")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn code_spans_read_as_plain_words() {
        assert_eq!(
            super::plain("then `mailgate retry ID` sends it"),
            "then mailgate retry ID sends it"
        );
        assert_eq!(super::plain("a ` b"), "a ` b");
    }

    #[test]
    fn sizes_in_words() {
        assert_eq!(super::size(1), "1 byte");
        assert_eq!(super::size(900), "900 bytes");
        assert_eq!(super::size(12 * 1024 + 5), "12 KB");
        assert_eq!(super::size(20_527_149), "19.6 MB");
    }

    #[test]
    fn one_is_singular() {
        assert_eq!(super::counted(1u64, "message"), "1 message");
        assert_eq!(super::counted(0u64, "message"), "0 messages");
        assert_eq!(super::counted(2u32, "recipient"), "2 recipients");
    }
}

/// `s` cut to at most `max` bytes on a character boundary, its last three bytes `...`
/// when cut: how the history keeps a field a client chose the length of.
pub fn clipped(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The most of a subject the history keeps, in bytes (RFC 5322's line length).
pub const MAX_SUBJECT: usize = 998;

#[cfg(test)]
mod clip_tests {
    use super::*;

    #[test]
    fn clipped_keeps_whole_characters() {
        assert_eq!(clipped("short", 998), "short");
        let long = "\u{e9}".repeat(600);
        let c = clipped(&long, 998);
        assert!(c.len() <= 998 && c.ends_with("..."), "{}", c.len());
        assert_eq!(clipped("abcdefgh", 6), "abc...");
    }
}
