//! The DATA reader: turns the bytes after `354` into the message, ending only at
//! `<CRLF>.<CRLF>`, removing dot-stuffing, applying the size limit and noting bare CR/LF
//! and over-long lines.
//!
//! Why not smtp-proto's `DataReceiver`: it also ends the data at `<CRLF>.<CR><CR>...<LF>`
//! (a dot line ended by several CRs), a sequence another server may pass through as
//! content, which would let a client smuggle commands after it; and it misses the
//! terminator of an empty message. Here only `CR LF . CR LF` (or `. CR LF` at the very
//! start) ends the data. A dot line after a bare CR or LF, or ended by one, is never the
//! end, so `\n.\n`, `\n.\r\n`, `\r.\r\n` and `\r\n.\n` are all content. In normalize
//! mode a bare CR or LF otherwise ends a line like CRLF (dot-unstuffing applies after it),
//! as clients that write bare LFs also stuff dots after them.

use memchr::memchr2;

/// The result of reading one DATA section.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DataOutcome {
    /// The message (empty when it went over the size limit).
    pub bytes: Vec<u8>,
    /// Octets received after unstuffing (counted even past the limit).
    pub size: u64,
    /// The message was larger than the limit; its bytes were discarded.
    pub too_big: bool,
    /// A CR or LF not part of a CRLF was seen.
    pub bare_newline: bool,
    /// The longest line, in octets without its CRLF.
    pub max_line: usize,
}

/// Where the reader stands relative to the start of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineStart {
    /// Inside a line.
    No,
    /// After a real CRLF (or at the start): a dot line here may end the data.
    Strict,
    /// After a bare CR/LF in normalize mode: dot-unstuffing applies, the end of data does
    /// not (as Postfix's `smtpd_forbid_bare_newline = normalize`).
    Loose,
}

/// Incremental DATA reader.
#[derive(Debug)]
pub struct DataReader {
    limit: u64,
    normalize: bool,
    line_start: LineStart,
    /// A line began with a dot (dropped so far); `Some(true)` when it began strictly.
    dot_line: Option<bool>,
    pending_cr: bool,
    line_len: usize,
    out: DataOutcome,
}

impl DataReader {
    /// A reader keeping at most `limit` octets; bare CR/LF become CRLF when `normalize`.
    pub fn new(limit: u64, normalize: bool) -> DataReader {
        DataReader {
            limit,
            normalize,
            line_start: LineStart::Strict,
            dot_line: None,
            pending_cr: false,
            line_len: 0,
            out: DataOutcome::default(),
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.out.size += bytes.len() as u64;
        if self.out.size > self.limit {
            if !self.out.too_big {
                self.out.too_big = true;
                self.out.bytes = Vec::new();
            }
        } else {
            self.out.bytes.extend_from_slice(bytes);
        }
    }

    fn content(&mut self, bytes: &[u8]) {
        self.line_len += bytes.len();
        self.out.max_line = self.out.max_line.max(self.line_len);
        self.emit(bytes);
    }

    fn end_line(&mut self) {
        self.line_len = 0;
        self.emit(b"\r\n");
    }

    fn bare(&mut self, ch: u8) {
        self.out.bare_newline = true;
        if self.normalize {
            self.end_line();
            self.line_start = LineStart::Loose;
        } else {
            self.content(&[ch]);
            self.line_start = LineStart::No;
        }
    }

    /// A dot line that turned out not to be the terminator keeps its dot.
    fn keep_dot(&mut self) {
        if self.dot_line.take().is_some() {
            self.content(b".");
        }
    }

    /// Feeds bytes; returns how many were consumed and, at the end of data, the outcome.
    /// Bytes after the terminator are not consumed (they are the next commands).
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<DataOutcome>) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    i += 1;
                    if self.dot_line == Some(true) {
                        return (i, Some(std::mem::take(&mut self.out)));
                    }
                    self.keep_dot();
                    self.end_line();
                    self.line_start = LineStart::Strict;
                    continue;
                }
                // A CR not followed by LF; `b` is looked at again on the next turn.
                self.keep_dot();
                self.bare(b'\r');
                continue;
            }
            if self.dot_line.is_some() {
                match b {
                    b'\r' => {
                        self.pending_cr = true;
                        i += 1;
                    }
                    b'\n' => {
                        // ".\n": the client ended its line; the dot is content.
                        self.keep_dot();
                        self.bare(b'\n');
                        i += 1;
                    }
                    _ => {
                        // A stuffed dot: drop it; `b` is content, looked at next turn.
                        self.dot_line = None;
                    }
                }
                continue;
            }
            if self.line_start != LineStart::No && b == b'.' {
                self.dot_line = Some(self.line_start == LineStart::Strict);
                self.line_start = LineStart::No;
                i += 1;
                continue;
            }
            self.line_start = LineStart::No;
            match b {
                b'\r' => {
                    self.pending_cr = true;
                    i += 1;
                }
                b'\n' => {
                    self.bare(b'\n');
                    i += 1;
                }
                _ => {
                    let run = memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                    self.content(&input[i..i + run]);
                    i += run;
                }
            }
        }
        (i, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], normalize: bool) -> (usize, Option<DataOutcome>) {
        DataReader::new(1 << 20, normalize).feed(input)
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf_and_unstuffs() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n";
        let (n, out) = read_all(input, true);
        let out = out.expect("end of data");
        assert_eq!(out.bytes, b"Subject: x\r\n\r\n.leading dot\r\n");
        assert_eq!(&input[n..], b"QUIT\r\n");
        assert!(!out.bare_newline);
    }

    #[test]
    fn empty_message_terminator_at_start() {
        let (n, out) = read_all(b".\r\nQUIT\r\n", true);
        assert_eq!(out.unwrap().bytes, b"");
        assert_eq!(n, 3);
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let input = b"A\r\n..b\r\n.c\r\nx\ry\nz\r\n.\r\n";
        let mut r = DataReader::new(1 << 20, true);
        let mut got = None;
        for (i, b) in input.iter().enumerate() {
            let (n, o) = r.feed(std::slice::from_ref(b));
            assert_eq!(n, 1);
            if o.is_some() {
                assert_eq!(i, input.len() - 1);
                got = o;
            }
        }
        assert_eq!(got, read_all(input, true).1);
        assert_eq!(got.unwrap().bytes, b"A\r\n.b\r\nc\r\nx\r\ny\r\nz\r\n");
    }

    /// The four smuggling shapes never end the data, in either mode, and what follows
    /// them stays inside the one message.
    #[test]
    fn smuggling_variants_are_content() {
        for variant in [&b"\n.\n"[..], b"\n.\r\n", b"\r.\r\n", b"\r\n.\n"] {
            for normalize in [true, false] {
                let mut input = b"Subject: a\r\n\r\nbody".to_vec();
                input.extend_from_slice(variant);
                input.extend_from_slice(
                    b"MAIL FROM:<evil@x.com>\r\nRCPT TO:<v@y.com>\r\nDATA\r\nsmuggled\r\n.\r\n",
                );
                let (n, out) = read_all(&input, normalize);
                let out = out.expect("ends at the real terminator");
                assert_eq!(n, input.len(), "{variant:?}");
                assert!(out.bare_newline, "{variant:?}");
                let text = String::from_utf8(out.bytes).unwrap();
                assert!(text.contains("MAIL FROM:<evil@x.com>"), "{variant:?}");
                assert!(text.ends_with("smuggled\r\n"), "{variant:?}");
                if normalize {
                    assert!(
                        !text.replace("\r\n", "").contains(['\r', '\n']),
                        "{variant:?}: {text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn dot_cr_cr_lf_is_not_the_end() {
        let (_, out) = read_all(b"a\r\n.\r\r\nMAIL FROM:<x@y.z>\r\n.\r\n", true);
        let out = out.unwrap();
        assert_eq!(out.bytes, b"a\r\n.\r\n\r\nMAIL FROM:<x@y.z>\r\n");
    }

    #[test]
    fn bare_lf_lines_are_unstuffed_in_normalize_mode() {
        // After a bare LF, ".\r\n" is not the end; it takes a real CRLF before it.
        assert_eq!(read_all(b"a\n..b\n.\r\n", true).1, None);
        let (_, out) = read_all(b"a\n..b\n.\n\r\n.\r\n", true);
        assert_eq!(out.unwrap().bytes, b"a\r\n.b\r\n.\r\n\r\n");
        let (_, out) = read_all(b"a\n..b\r\n.\r\n", false);
        assert_eq!(out.unwrap().bytes, b"a\n..b\r\n");
    }

    #[test]
    fn over_limit_is_discarded_but_read_to_the_end() {
        let mut r = DataReader::new(10, true);
        let (n, out) = r.feed(b"0123456789abcdef\r\n.\r\nNOOP\r\n");
        let out = out.unwrap();
        assert!(out.too_big);
        assert!(out.bytes.is_empty());
        assert_eq!(out.size, 18);
        assert_eq!(n, 21);
    }

    #[test]
    fn longest_line_is_measured() {
        let mut input = vec![b'x'; 1200];
        input.extend_from_slice(b"\r\nshort\r\n.\r\n");
        assert_eq!(read_all(&input, true).1.unwrap().max_line, 1200);
    }
}
