//! The house's map as a test. `ROOMS` is the one table of src/'s rooms, their jobs and
//! the rooms each may use; this test reads every `crate::` path in src/ (comments left
//! out) and fails on a use the table does not allow, on an allowed use that no code
//! makes (the map stays true), and on a circle. DEVELOPERS.md's table of rooms is
//! generated from it: `MAILGATE_WRITE_ROOMS=1 cargo test --test architecture` writes it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// (room, its job, the rooms it may use). A room is a file or a directory under src/;
/// `lib` is the crate root (lib.rs and main.rs wire every room and are not listed).
const ROOMS: &[(&str, &str, &[&str])] = &[
    (
        "address",
        "address syntax, an envelope's policy, which domains can receive mail",
        &[],
    ),
    (
        "diagnosis",
        "the diagnosis catalogue: every `Code`, its explanation and fix, and how an upstream reply is recognised",
        &[],
    ),
    ("files", "small state files written whole", &[]),
    ("metrics", "the metric families", &[]),
    ("pem", "a TLS listener's PEM chain and key", &[]),
    ("text", "counted, clipped and plain words, sizes", &[]),
    ("time", "clocks and formats", &[]),
    (
        "unix",
        "Unix users by uid, the owner of a local TCP connection",
        &[],
    ),
    (
        "aliases",
        "aliases(5) for the sendmail door's local names",
        &[],
    ),
    (
        "config",
        "the schema, every check of a file, start-only keys, what each provider kind needs and defaults to, chains and routes",
        &["address", "time"],
    ),
    (
        "secrets",
        "passwords and tokens at rest (encrypted with the installation's key)",
        &["config"],
    ),
    ("history", "the record types", &["diagnosis", "time"]),
    (
        "store",
        "the only user of redb: schema, the writer thread with group commit, retention, health, check and salvage",
        &["config", "history", "time"],
    ),
    (
        "message",
        "the message stage: identify, rewrite, long lines, trace headers, CRLF made final",
        &["aliases", "config"],
    ),
    (
        "pipeline",
        "the one door into the store",
        &[
            "config", "history", "message", "metrics", "store", "text", "time",
        ],
    ),
    (
        "maildrop",
        "the maildrop: files the sendmail door leaves when the daemon is away",
        &["address", "config", "pipeline", "unix"],
    ),
    (
        "smtp",
        "the SMTP listener: sockets, TLS, the session (one file per verb), the DATA reader, policy, AUTH",
        &[
            "address", "config", "message", "metrics", "pem", "pipeline", "secrets", "store",
            "time", "unix",
        ],
    ),
    (
        "provider",
        "one room per kind (eml, smtp, graph), `oauth2/`, `stage.rs` (bounded steps)",
        &[
            "config",
            "diagnosis",
            "message",
            "secrets",
            "store",
            "text",
            "time",
        ],
    ),
    (
        "fleet",
        "the only user of Redis",
        &["config", "metrics", "time"],
    ),
    (
        "notify",
        "the notice to a sender: whether a message may get one and the RFC 3464 report; pure",
        &["history", "message", "text", "time"],
    ),
    (
        "distributor",
        "scan, chains, circuits, limits of a node or a fleet, outcomes, retry, cancel, notices, what a restart keeps",
        &[
            "address",
            "config",
            "diagnosis",
            "files",
            "fleet",
            "history",
            "message",
            "metrics",
            "notify",
            "provider",
            "secrets",
            "store",
            "time",
        ],
    ),
    (
        "snapshot",
        "one reading of the daemon (`Core`, `Snapshot`, `store_problem`) for `/status`, the dashboard and the alerts",
        &[
            "config",
            "distributor",
            "history",
            "pipeline",
            "provider",
            "store",
            "time",
        ],
    ),
    (
        "alerts",
        "the alert engine: conditions from the snapshot every 2 s, firing and resolved, the `failed` digest, `alerts.json`, delivery",
        &[
            "config", "files", "fleet", "history", "metrics", "snapshot", "time",
        ],
    ),
    (
        "reload",
        "SIGHUP's work",
        &["config", "distributor", "pipeline"],
    ),
    (
        "background",
        "the fleet heartbeat and the OAuth2 keep-alive",
        &["alerts", "distributor", "fleet", "history", "store"],
    ),
    (
        "status",
        "the status listener: state, query, actions, api (JSON), fleet_view, pages (HTML), http (router), its TLS",
        &[
            "address",
            "alerts",
            "config",
            "distributor",
            "fleet",
            "history",
            "message",
            "metrics",
            "pem",
            "pipeline",
            "provider",
            "reload",
            "snapshot",
            "store",
            "text",
            "time",
        ],
    ),
    (
        "cli",
        "the commands (the admin ones talk to the API), the sendmail door",
        &[
            "address", "alerts", "aliases", "config", "history", "lib", "maildrop", "message",
            "notify", "provider", "secrets", "smtp", "status", "store", "text", "time", "unix",
        ],
    ),
    (
        "fuzzing",
        "the fuzz targets' properties over the real parsers (fuzz/ and the regression replay call them); no daemon code uses it",
        &[
            "address",
            "aliases",
            "config",
            "diagnosis",
            "fleet",
            "history",
            "maildrop",
            "message",
            "notify",
            "provider",
            "smtp",
            "store",
            "time",
        ],
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The first names after `crate::`: one (`crate::store::Body`), or each of a group
/// (`crate::{fleet, history::Status}`).
fn named(after: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = after.strip_prefix('{') else {
        return vec![ident(after)];
    };
    let (mut depth, mut names, mut start) = (1, Vec::new(), 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 1 => {
                names.push(ident(&group[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 1 => {
                names.push(ident(&group[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

/// room -> rooms it uses -> where (file:line, the first few).
fn uses() -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let rooms: BTreeSet<&str> = ROOMS.iter().map(|r| r.0).collect();
    let root = src();
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for f in all {
        let rel = f.strip_prefix(&root).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let room = first.trim_end_matches(".rs").to_string();
        if room == "lib" || room == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        // The code without its comment lines, each kept as an empty line (so positions
        // still give line numbers).
        let code: String = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("//") {
                    ""
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        for (at, _) in code.match_indices("crate::") {
            let line = code[..at].matches('\n').count() + 1;
            for name in named(&code[at + 7..]) {
                let target = if rooms.contains(name.as_str()) {
                    name
                } else {
                    "lib".to_string()
                };
                if target != room {
                    let at = out
                        .entry(room.clone())
                        .or_default()
                        .entry(target)
                        .or_default();
                    if at.len() < 3 {
                        at.push(format!("{}:{line}", rel.display()));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_room_uses_only_what_the_map_allows_and_the_map_is_true() {
    let found = uses();
    let mut wrong = Vec::new();
    let known: BTreeSet<&str> = ROOMS.iter().map(|r| r.0).collect();
    for room in found.keys() {
        if !known.contains(room.as_str()) {
            wrong.push(format!("{room}: a room the map does not list"));
        }
    }
    for (room, _, allowed) in ROOMS {
        let used = found.get(*room).cloned().unwrap_or_default();
        for (target, at) in &used {
            if !allowed.contains(&target.as_str()) {
                wrong.push(format!(
                    "{room} uses {target} ({}), which the map does not allow",
                    at.join(", ")
                ));
            }
        }
        for a in *allowed {
            if !used.contains_key(*a) {
                wrong.push(format!(
                    "{room} may use {a} but does not: take it off the map"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_room_reaches_itself() {
    let map: BTreeMap<&str, &[&str]> = ROOMS.iter().map(|r| (r.0, r.2)).collect();
    for (room, _, _) in ROOMS {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&str> = map[room].to_vec();
        while let Some(r) = todo.pop() {
            assert_ne!(r, *room, "{room} reaches itself through the rooms it uses");
            if seen.insert(r) {
                todo.extend(map.get(r).copied().unwrap_or_default());
            }
        }
    }
}

const BEGIN: &str =
    "<!-- rooms: generated by tests/architecture.rs from its ROOMS table; edit it there -->";
const END: &str = "<!-- end of rooms -->";

fn rendered() -> String {
    let mut s = format!("{BEGIN}\n\n| room | its job | may use |\n|---|---|---|\n");
    for (room, job, allowed) in ROOMS {
        let path = if src().join(room).is_dir() {
            format!("`{room}/`")
        } else {
            format!("`{room}.rs`")
        };
        let uses = if allowed.is_empty() {
            "nothing of the crate (a leaf)".to_string()
        } else {
            allowed
                .iter()
                .map(|a| {
                    if *a == "lib" {
                        "`lib.rs` (the daemon's start)".to_string()
                    } else {
                        format!("`{a}`")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        s.push_str(&format!("| {path} | {job} | {uses} |\n"));
    }
    s.push_str(&format!("| `lib.rs`, `main.rs` | wiring: builds the rooms, starts the tasks, shuts down | everything |\n\n{END}"));
    s
}

#[test]
fn developers_md_shows_the_map() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("DEVELOPERS.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let (Some(a), Some(b)) = (text.find(BEGIN), text.find(END)) else {
        panic!("DEVELOPERS.md has no generated map between {BEGIN} and {END}");
    };
    let now = &text[a..b + END.len()];
    let want = rendered();
    if now != want {
        if std::env::var_os("MAILGATE_WRITE_ROOMS").is_some() {
            std::fs::write(&path, text.replace(now, &want)).unwrap();
            return;
        }
        panic!(
            "DEVELOPERS.md's map differs from tests/architecture.rs; MAILGATE_WRITE_ROOMS=1 cargo test --test architecture writes it:\n{want}"
        );
    }
}
