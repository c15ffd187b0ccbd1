//! Message bodies: small ones inside the database, large ones in files beside it.
//!
//! redb keeps a value whole in its pages: writing a 25 MB body takes 25 MB of dirty
//! pages until the commit, and reading it back copies it out of the page cache, so a
//! large message would sit in memory two or three times over. A body of at least
//! [`FILE_MIN`] bytes is therefore a file in the store's `.bodies` directory, named by
//! the message id: written and fsynced (with its directory) before the commit that
//! references it, recorded in the `body_files` table with its length and in `body_crc`
//! with its checksum like any body, checked against both before it is relayed, removed
//! after the commit that deletes its record. A file no record refers to (a crash
//! between the file and its commit: never acknowledged) is removed when the store opens.
//! Readers take pieces at an offset (`pread`), never the whole file.

use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bodies of at least this many bytes are kept in files.
pub const FILE_MIN: usize = 256 * 1024;

/// The size of the pieces a file body is read in.
pub const PIECE: usize = 64 * 1024;

/// Test hook (`MAILGATE_FAULT_BODY_READ=N`): reading a body file at or beyond byte `N`
/// fails as a disk read error would.
pub const READ_FAULT_ENV: &str = "MAILGATE_FAULT_BODY_READ";

/// The directory of body files of the store at `store`: `mailgate.redb` keeps them in
/// `mailgate.bodies/` beside it.
pub fn dir_of(store: &Path) -> PathBuf {
    store.with_extension("bodies")
}

/// A stored message body, as read for relaying or showing.
#[derive(Debug)]
pub enum Body {
    /// A small body, read out of the database.
    Memory(Vec<u8>),
    /// A large body: its open file (still readable if retention removes it meanwhile)
    /// and its length.
    File {
        /// The file, read with `pread`.
        file: File,
        /// Its length in bytes.
        len: u64,
        /// Its checksum as recorded (checked again as it is sent).
        crc: Option<u32>,
    },
}

fn read_fault() -> Option<u64> {
    std::env::var(READ_FAULT_ENV).ok()?.parse().ok()
}

impl Body {
    /// A body held in memory (tests, the admin API's previews).
    pub fn from_bytes(bytes: Vec<u8>) -> Body {
        Body::Memory(bytes)
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Body::Memory(v) => v.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    /// True when it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// At most `n` bytes from offset `at` (fewer only at the end).
    pub fn read_at(&self, at: u64, n: usize) -> std::io::Result<Cow<'_, [u8]>> {
        let end = self.len().min(at.saturating_add(n as u64));
        let at = at.min(end);
        match self {
            Body::Memory(v) => Ok(Cow::Borrowed(&v[at as usize..end as usize])),
            Body::File { file, .. } => {
                if read_fault().is_some_and(|f| end > f) {
                    return Err(std::io::Error::other(format!(
                        "fault injection ({READ_FAULT_ENV}): read error at byte {at}"
                    )));
                }
                let mut buf = vec![0; (end - at) as usize];
                file.read_exact_at(&mut buf, at)?;
                Ok(Cow::Owned(buf))
            }
        }
    }

    /// The whole body in memory: borrowed when it is there already.
    pub fn bytes(&self) -> std::io::Result<Cow<'_, [u8]>> {
        self.read_at(0, self.len() as usize)
    }

    /// The first bytes, enough for the header block of any message mailgate takes
    /// (`head_len`): what a notice, a page or a Graph header check reads.
    pub fn head(&self) -> std::io::Result<Cow<'_, [u8]>> {
        self.read_at(0, HEAD_LEN)
    }

    /// The bytes of `range` in pieces of at most [`PIECE`] bytes, in order.
    pub fn pieces(&self, range: std::ops::Range<u64>) -> Pieces<'_> {
        Pieces {
            body: self,
            at: range.start,
            end: range.end.min(self.len()),
        }
    }

    /// Its CRC32C, read piece by piece.
    pub fn crc(&self) -> std::io::Result<u32> {
        let mut crc = 0;
        for p in self.pieces(0..self.len()) {
            crc = crc32c::crc32c_append(crc, &p?);
        }
        Ok(crc)
    }

    /// True when every byte is ASCII, read piece by piece.
    pub fn is_ascii(&self) -> std::io::Result<bool> {
        for p in self.pieces(0..self.len()) {
            if !p?.is_ascii() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes it to `out` piece by piece.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        for p in self.pieces(0..self.len()) {
            out.write_all(&p?)?;
        }
        Ok(())
    }
}

impl Body {
    /// The body as an HTTP response body: a small one as it is, a large one streamed
    /// from its file piece by piece (each read on the blocking pool), never whole.
    pub fn into_http(self) -> axum::body::Body {
        let file = match self {
            Body::Memory(v) => return axum::body::Body::from(v),
            file => std::sync::Arc::new(file),
        };
        let len = file.len();
        let pieces = futures_util::stream::unfold(0u64, move |at| {
            let file = file.clone();
            async move {
                if at >= len {
                    return None;
                }
                let read = tokio::task::spawn_blocking(move || {
                    file.read_at(at, PIECE)
                        .map(|c| bytes::Bytes::from(c.into_owned()))
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                // An error ends the stream (the response is cut short, never completed).
                let next = if read.is_ok() { at + PIECE as u64 } else { len };
                Some((read, next))
            }
        });
        axum::body::Body::from_stream(pieces)
    }
}

/// How many bytes [`Body::head`] reads: a header block is far smaller.
pub const HEAD_LEN: usize = 256 * 1024;

/// A body's bytes in pieces; see [`Body::pieces`].
#[derive(Debug)]
pub struct Pieces<'a> {
    body: &'a Body,
    at: u64,
    end: u64,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = std::io::Result<Cow<'a, [u8]>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.end {
            return None;
        }
        let n = PIECE.min((self.end - self.at) as usize);
        let piece = self.body.read_at(self.at, n);
        self.at = match piece {
            Ok(_) => self.at + n as u64,
            // An error ends the pieces.
            Err(_) => self.end,
        };
        Some(piece)
    }
}

/// Writes a large body's file, fsyncs it and its directory (so the name survives a
/// crash before the commit that refers to it), and returns its CRC32C. A file left half
/// written by a failure is removed.
pub fn write_file(dir: &Path, id: &str, bytes: &[u8]) -> std::io::Result<u32> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
    }
    let path = dir.join(id);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(crc32c::crc32c(bytes))
}

/// Opens a large body's file and checks it against the length and checksum its record
/// holds; the reason when it does not match.
pub fn open_file(dir: &Path, id: &str, len: u64, crc: Option<u32>) -> Result<Body, String> {
    let path = dir.join(id);
    let file = File::open(&path).map_err(|e| {
        format!(
            "the body file {} of {id} cannot be opened: {e}",
            path.display()
        )
    })?;
    let on_disk = file
        .metadata()
        .map_err(|e| format!("the body file {} of {id}: {e}", path.display()))?
        .len();
    if on_disk != len {
        return Err(format!(
            "the body file {} of {id} has {on_disk} bytes, its record says {len}",
            path.display()
        ));
    }
    let body = Body::File { file, len, crc };
    if let Some(want) = crc {
        let got = body
            .crc()
            .map_err(|e| format!("the body file {} of {id}: {e}", path.display()))?;
        if got != want {
            return Err(format!(
                "the stored body of {id} fails its checksum (CRC32C {got:08x}, stored {want:08x})"
            ));
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_body_reads_back_in_pieces_and_fails_a_changed_byte() {
        let dir = tempfile::tempdir().unwrap();
        let bodies = dir.path().join("m.bodies");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let crc = write_file(&bodies, "01A", &bytes).unwrap();
        let body = open_file(&bodies, "01A", bytes.len() as u64, Some(crc)).unwrap();
        let mut back = Vec::new();
        for p in body.pieces(0..body.len()) {
            let p = p.unwrap();
            assert!(p.len() <= PIECE);
            back.extend_from_slice(&p);
        }
        assert_eq!(back, bytes);
        assert_eq!(&*body.read_at(299_990, 100).unwrap(), &bytes[299_990..]);
        assert!(
            write_file(&bodies, "01A", b"again").is_err(),
            "never overwritten"
        );
        let mut changed = bytes.clone();
        changed[123_456] ^= 1;
        std::fs::write(bodies.join("01A"), &changed).unwrap();
        let e = open_file(&bodies, "01A", bytes.len() as u64, Some(crc)).unwrap_err();
        assert!(e.contains("fails its checksum"), "{e}");
        let e = open_file(&bodies, "01A", 5, Some(crc)).unwrap_err();
        assert!(e.contains("its record says 5"), "{e}");
        let e = open_file(&bodies, "01B", 5, None).unwrap_err();
        assert!(e.contains("cannot be opened"), "{e}");
    }
}
