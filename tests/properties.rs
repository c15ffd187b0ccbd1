//! Property tests over the two places hostile input meets mailgate: the DATA reader and
//! the From rewrite. Arbitrary bytes never panic; the rewrite never changes a byte
//! outside the header fields it owns; one DATA never yields a second message.

use mailgate::message::longlines;
use mailgate::message::rewrite::{Rewrite, rewrite};
use mailgate::smtp::data::DataReader;
use proptest::prelude::*;

fn plan() -> Rewrite {
    Rewrite {
        target: "billing@contoso.com".into(),
        sender: Some("relay@contoso.com".into()),
        reply_to_original: true,
    }
}

/// Header fields as (name, value) with values that may fold.
fn field() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        Just("From".to_string()),
        Just("from".to_string()),
        Just("Sender".to_string()),
        Just("Subject".to_string()),
        Just("To".to_string()),
        Just("Reply-To".to_string()),
        "[A-Za-z][A-Za-z0-9-]{0,12}",
    ];
    let value = prop_oneof![
        "[ -~]{0,60}",
        "[ -~]{0,20}\r\n [ -~]{1,20}",
        Just(" \"Last, First\" <a@b.example>".to_string()),
        Just(" =?UTF-8?B?0JrQuNGA0LjQu9C70LjRhtCw?= <x@y.example>".to_string()),
        Just(" undisclosed:;".to_string()),
        Just(" <a@b.example>, c@d.example".to_string()),
    ];
    (name, value)
}

/// The fields of a header block, by the rule "a field runs until a line that does not
/// start with white space".
fn fields(block: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in block.split_inclusive("\r\n") {
        if (line.starts_with(' ') || line.starts_with('\t')) && !out.is_empty() {
            out.last_mut().unwrap().push_str(line);
        } else {
            out.push(line.to_string());
        }
    }
    out
}

fn name_of(field: &str) -> String {
    field
        .split(':')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// A message of these header fields and this body (its line ends made CRLF, as stored):
/// the header block, the body and the whole.
fn message_of(hdrs: &[(String, String)], body: &[u8]) -> (String, Vec<u8>, Vec<u8>) {
    let body: Vec<u8> = body
        .iter()
        .flat_map(|&b| {
            if b == b'\n' || b == b'\r' {
                b"\r\n".to_vec()
            } else {
                vec![b]
            }
        })
        .collect();
    let head: String = hdrs.iter().map(|(n, v)| format!("{n}:{v}\r\n")).collect();
    let mut input = head.clone().into_bytes();
    input.extend_from_slice(b"\r\n");
    input.extend_from_slice(&body);
    (head, body, input)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn rewrite_keeps_every_byte_it_does_not_own(
        hdrs in proptest::collection::vec(field(), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let (head, body, input) = message_of(&hdrs, &body);
        let out = rewrite(&input, &plan());
        // The body is byte for byte the same.
        prop_assert!(out.ends_with(&body));
        // Every field we do not own is still there, in order.
        let owned = ["from", "x-original-from", "sender", "x-original-sender", "reply-to"];
        let out_head = String::from_utf8_lossy(&out[..out.len() - body.len()]).into_owned();
        let keep = |f: &String| !owned.contains(&name_of(f).as_str());
        let before: Vec<String> = fields(&head).into_iter().filter(keep).collect();
        let after: Vec<String> = fields(&out_head).into_iter().filter(keep).filter(|f| f != "\r\n").collect();
        prop_assert_eq!(before, after);
        // Exactly one From field comes out.
        prop_assert_eq!(fields(&out_head).iter().filter(|f| name_of(f) == "from").count(), 1);
    }

    #[test]
    fn the_whole_message_stage_keeps_every_byte_it_does_not_own(
        hdrs in proptest::collection::vec(field(), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let (head, body, input) = message_of(&hdrs, &body);
        let config = mailgate::config::Config::parse(
            "[rewrite]\ndefault_sender = \"billing@contoso.com\"\n[[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"o\"\n",
            std::path::Path::new("p.toml"),
        ).unwrap();
        let rcpts = vec!["a@contoso.com".to_string()];
        let facts = mailgate::message::Facts {
            id: "01JPROP", now_ms: 1_795_000_000_000, hostname: "relay.test", helo: "erp",
            client_ip: "127.0.0.1".into(), protocol: "ESMTP", auth_login: None,
            mail_from: "app@erp.local", rcpts: &rcpts, as_user: None, provider: None,
            longest_line: Some(longlines::longest_line(&input)),
        };
        let Ok(p) = mailgate::message::process(input.clone(), &facts, &config) else {
            return Ok(());
        };
        if longlines::longest_line(&input) <= longlines::MAX_LINE {
            prop_assert!(p.raw.ends_with(&body), "the body is byte for byte the same");
            prop_assert!(p.raw.starts_with(b"Received: from erp (127.0.0.1)"));
            let out_head = String::from_utf8_lossy(&p.raw[..p.raw.len() - body.len()]).into_owned();
            let owned = ["from", "x-original-from", "sender", "x-original-sender", "reply-to", "received", "message-id", "date"];
            let keep = |f: &String| !owned.contains(&name_of(f).as_str());
            let before: Vec<String> = fields(&head).into_iter().filter(keep).collect();
            let after: Vec<String> = fields(&out_head).into_iter().filter(keep).filter(|f| f != "\r\n").collect();
            prop_assert_eq!(before, after);
        }
    }

    #[test]
    fn rewrite_and_long_lines_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let out = rewrite(&raw, &plan());
        if let Ok(enc) = longlines::encode(&out) {
            prop_assert!(longlines::longest_line(&enc) <= longlines::MAX_LINE);
        }
    }

    #[test]
    fn one_data_section_is_one_message(
        raw in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..400),
        normalize in any::<bool>(),
    ) {
        // The client's content never contains the real terminator (it would dot-stuff).
        let mut input = raw.clone();
        input.extend_from_slice(b"\r\n.\r\nMAIL FROM:<next@x.y>\r\n");
        prop_assume!(memchr::memmem::find(&input, b"\r\n.\r\n") == Some(raw.len()) && !input.starts_with(b".\r\n"));
        let mut r = DataReader::new(1 << 20, normalize);
        let (n, out) = r.feed(&input);
        prop_assert!(out.is_some());
        prop_assert_eq!(&input[n..], b"MAIL FROM:<next@x.y>\r\n");
    }
}
