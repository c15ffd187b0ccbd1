//! Golden tests of the From rewrite on real-world shaped messages (the shared corpus and
//! `tests/data/`): the header block must equal the reviewed golden file, and the body must
//! be the submitted body byte for byte (for an over-long line: the same after
//! quoted-printable decoding). Regenerate goldens with `UPDATE_GOLDEN=1` and review.

use std::path::{Path, PathBuf};

use mailgate::message::longlines::{self, qp_decode};
use mailgate::message::rewrite::{Rewrite, rewrite};

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/corpus/eml")
        .join(name)
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// What the SMTP path stores for these bytes: bare LF or CR become CRLF, and the data
/// ends with a line end.
fn as_submitted(raw: &[u8]) -> Vec<u8> {
    let mut out = mailgate::message::crlf_normalized(raw).into_owned();
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn split(msg: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memmem::find(msg, b"\r\n\r\n") {
        Some(i) => (&msg[..i + 2], &msg[i + 4..]),
        None => (msg, b""),
    }
}

fn check(path: &Path, plan: &Rewrite, tag: &str) {
    let input = as_submitted(&std::fs::read(path).unwrap());
    let mut out = rewrite(&input, plan);
    let long = longlines::longest_line(&out) > longlines::MAX_LINE;
    if long {
        out = longlines::encode(&out).unwrap();
    }
    assert!(
        longlines::longest_line(&out) <= longlines::MAX_LINE,
        "{path:?}"
    );
    let (head, body) = split(&out);
    let name = path.file_stem().unwrap().to_string_lossy();
    let golden = data("golden").join(format!("{name}{tag}.headers"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, head).unwrap();
    }
    let want = std::fs::read(&golden).unwrap_or_else(|_| panic!("missing golden {golden:?}"));
    assert_eq!(
        String::from_utf8_lossy(head),
        String::from_utf8_lossy(&want),
        "header block of {name}"
    );
    let (in_head, in_body) = split(&input);
    if long {
        // The re-encoded part decodes to the submitted content.
        let text = String::from_utf8_lossy(body);
        assert!(
            String::from_utf8_lossy(&qp_decode(body)).len() >= in_body.len() / 2,
            "{text}"
        );
    } else if !in_head.is_empty() && memchr::memmem::find(&input, b"\r\n\r\n").is_some() {
        assert_eq!(body, in_body, "body of {name} is untouched");
    }
}

fn send_as() -> Rewrite {
    Rewrite {
        target: "billing@contoso.com".into(),
        sender: None,
        reply_to_original: false,
    }
}

#[test]
fn corpus_from_shapes() {
    for f in [
        "001-from-bare-addr-spec.eml",
        "002-from-addr-spec-with-comment.eml",
        "003-from-quoted-name-with-comment.eml",
        "004-from-oddly-quoted-name.eml",
        "005-from-rfc2047-b-utf8-cyrillic.eml",
        "006-from-rfc2047-b-utf8-comma-in-name.eml",
        "007-from-rfc2047-q-latin1-encoded-comma.eml",
        "010-from-rfc2047-q-latin1.eml",
        "011-from-rfc2047-b-cp1251-inside-quotes.eml",
        "014-from-folded-five-lines-rfc2047.eml",
        "015-from-folded-addr-on-continuation.eml",
        "016-from-raw-latin1-8bit-name.eml",
        "018-from-smtputf8-address.eml",
        "020-from-duplicate-headers.eml",
        "021-from-name-folded-before-colon.eml",
        "022-from-space-before-colon-duplicate.eml",
        "023-from-two-mailboxes-with-sender.eml",
        "024-from-source-route.eml",
        "025-from-two-mailboxes-at-in-to-name.eml",
        "026-from-two-addrs-no-comma.eml",
        "029-from-comments-group-to-cc.eml",
        "032-from-lowercase-header-name.eml",
        "033-from-leading-space-first-header.eml",
        "036-no-from-enclosed-message.eml",
        "039-body-crlf-multipart-pdf.eml",
        "043-body-8bit-alternative.eml",
        "049-body-binary-cte-nul-utf16.eml",
        "051-malformed-no-headers.eml",
        "053-malformed-bad-header-separator.eml",
    ] {
        check(&corpus(f), &send_as(), "");
    }
}

#[test]
fn own_fixtures() {
    for f in ["last-first-name.eml", "from-group-syntax.eml"] {
        check(&data(f), &send_as(), "");
    }
}

#[test]
fn on_behalf_of_with_reply_to() {
    let plan = Rewrite {
        target: "scanner@contoso.com".into(),
        sender: Some("relay@contoso.com".into()),
        reply_to_original: true,
    };
    check(&corpus("037-from-sender-reply-to-news.eml"), &plan, ".obo");
    check(&data("last-first-name.eml"), &plan, ".obo");
}

#[test]
fn long_lines_are_reencoded_and_decode_to_the_same_content() {
    for path in [
        corpus("046-body-very-long-lines.eml"),
        corpus("047-body-line-999-chars.eml"),
        data("html-one-line-5000.eml"),
    ] {
        check(&path, &send_as(), "");
        let input = as_submitted(&std::fs::read(&path).unwrap());
        let out = longlines::encode(&rewrite(&input, &send_as())).unwrap();
        // Decoding the re-encoded body gives back the submitted body.
        let parsed = mail_parser::MessageParser::default().parse(&out).unwrap();
        let original = mail_parser::MessageParser::default().parse(&input).unwrap();
        let texts = |m: &mail_parser::Message<'_>| -> Vec<String> {
            m.text_bodies()
                .chain(m.html_bodies())
                .filter_map(|p| p.text_contents().map(str::to_string))
                .collect()
        };
        assert_eq!(texts(&parsed), texts(&original), "{path:?}");
    }
}

#[test]
fn body_bytes_of_multiparts_are_untouched() {
    for f in [
        "039-body-crlf-multipart-pdf.eml",
        "041-body-nested-multipart-attachments.eml",
        "042-body-nested-mixed-related-alternative.eml",
        "045-body-base64-large-attachment.eml",
        "050-body-binary-cte-mbox-from-line.eml",
    ] {
        let input = as_submitted(&std::fs::read(corpus(f)).unwrap());
        let out = rewrite(&input, &send_as());
        let (_, in_body) = split(&input);
        let (_, out_body) = split(&out);
        assert_eq!(in_body, out_body, "{f}");
    }
}
