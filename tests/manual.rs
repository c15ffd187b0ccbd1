//! The manual: `mailgate manpage` renders mailgate(8) from the binary's own flags and
//! mailgate.toml(5), both clean under `man --warnings`; the configuration page names
//! every key the parser knows; `default-config` is a configuration `check-config` takes.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::bin;

fn out(args: &[&str]) -> String {
    let o = Command::new(bin()).args(args).output().unwrap();
    common::exited(&o, 0);
    String::from_utf8(o.stdout).unwrap()
}

/// The page as `man -l` renders it at 80 columns; panics on any warning.
fn render(roff: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    std::fs::write(&page, roff).unwrap();
    let o = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&page)
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .stdin(Stdio::null())
        .output()
        .expect("man (man-db) is installed by .ci/run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.trim().is_empty(), "man: {err}");
    // Rendered text: backspace overstrikes removed.
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut clean = String::new();
    for c in text.chars() {
        if c == '\u{8}' {
            clean.pop();
        } else {
            clean.push(c);
        }
    }
    clean
}

#[test]
fn mailgate_8_lists_every_command_with_its_flags() {
    let text = render(&out(&["manpage"]));
    let help = out(&["--help"]);
    // Every command `--help` lists has its own section.
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() > 20, "{help}");
    for c in &commands {
        assert!(
            text.contains(&format!("mailgate {c}\n")),
            "no section for {c}:\n{text}"
        );
    }
    for words in [
        "mailgate cancel",
        "mailgate store salvage",
        "mailgate oauth2 login",
        "--since <SINCE>",
        "EXIT STATUS",
        "MAILGATE_CONFIG",
        "mailgate.toml(5)",
    ] {
        assert!(text.contains(words), "{words:?} missing:\n{text}");
    }
}

/// Every key of the configuration schema (the fields of the `Deserialize` structs in
/// `src/config/`) is named in mailgate.toml(5).
#[test]
fn mailgate_toml_5_names_every_key() {
    let page = out(&["manpage", "5"]);
    let text = render(&page);
    let mut keys = Vec::new();
    for file in [
        "src/config/mod.rs",
        "src/config/provider.rs",
        "src/config/routes.rs",
        "src/config/alerts.rs",
    ] {
        let src = std::fs::read_to_string(file).unwrap();
        let mut in_schema = false;
        for line in src.lines() {
            let t = line.trim();
            if t.starts_with("#[derive(") {
                in_schema = t.contains("Deserialize");
            }
            if t.starts_with("pub struct") && !t.contains("Config") && !t.contains("Settings") {
                in_schema = false;
            }
            if in_schema
                && line.starts_with("    pub ")
                && let Some(name) = t
                    .strip_prefix("pub ")
                    .and_then(|r| r.split(':').next())
                    .filter(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            {
                keys.push(name.to_string());
            }
            if line == "}" {
                in_schema = false;
            }
        }
    }
    assert!(keys.len() > 60, "{keys:?}");
    for k in &keys {
        assert!(
            text.contains(k.as_str()),
            "mailgate.toml(5) does not name {k}"
        );
    }
}

#[test]
fn default_config_is_a_valid_configuration() {
    let text = out(&["default-config"]);
    assert!(text.starts_with("# mailgate"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailgate.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = Command::new(bin())
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{}: ok\n", path.display())
    );
    // Every commented key in it is one the parser knows: uncommented, it still parses
    // as far as the schema goes (an unknown key would be named).
    let opened: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.starts_with('[') => rest.to_string(),
            Some(rest)
                if rest.contains('=')
                    && rest.split('=').next().is_some_and(|k| {
                        let k = k.trim();
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest.to_string()
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, opened).unwrap();
    let o = Command::new(bin())
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("office365"),
        "the commented provider was read: {err}"
    );
    assert!(!err.contains("unknown field"), "{err}");
}
