//! Local names at the sendmail door (SPEC "Local names"): a recipient without `@` (cron's
//! `root`, `MAILTO=admin`, logwatch's user names) is looked up in an aliases(5) file and,
//! when no alias names it, goes to `sendmail.admin_address`.
//!
//! The file is read as sendmail and Postfix read `/etc/aliases`: `name: value, value`,
//! continuation lines start with white space, `#` starts a comment line, names match
//! without regard to case, and a value may be quoted. Values that deliver locally
//! (`|command`, `/file`) have no meaning for a relay and are skipped with a warning;
//! `:include:` lists are refused with the line that holds one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Nested aliases resolved at most this deep (sendmail's `MaxAliasRecursion`).
pub const MAX_DEPTH: usize = 10;

/// One value of an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// `user@domain`.
    Address(String),
    /// Another local name, resolved in turn.
    Name(String),
    /// `:include:/path`.
    Include(String),
    /// `|command` or `/file`: local delivery, which a relay does not do.
    Local(String),
}

#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    targets: Vec<Target>,
}

/// A parsed aliases file.
#[derive(Debug, Clone)]
pub struct Aliases {
    path: PathBuf,
    entries: HashMap<String, Entry>,
}

/// Why a local name could not be resolved; each names the file and line when it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    /// A name with no alias and no `admin_address` to fall back on.
    #[error("{0}")]
    NoUser(String),
    /// The aliases file cannot be used as written (`:include:`, a line without `:`,
    /// unreadable).
    #[error("{0}")]
    Config(String),
}

impl Aliases {
    /// Reads an aliases file.
    pub fn load(path: &Path) -> Result<Aliases, AliasError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            AliasError::Config(format!(
                "the aliases file {} (sendmail.aliases) cannot be read: {e}",
                path.display()
            ))
        })?;
        Aliases::parse(&text, path)
    }

    /// Parses aliases(5) text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Aliases, AliasError> {
        let mut entries = HashMap::new();
        // Logical lines: a line starting with white space continues the one before.
        let mut logical: Vec<(usize, String)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t'])
                && let Some((_, last)) = logical.last_mut()
            {
                last.push(' ');
                last.push_str(trimmed);
                continue;
            }
            logical.push((i + 1, line.to_string()));
        }
        for (line, text) in logical {
            let Some((name, values)) = text.split_once(':') else {
                return Err(AliasError::Config(format!(
                    "{}:{line}: expected `name: address, ...`",
                    path.display()
                )));
            };
            let name = name.trim().trim_matches('"').to_ascii_lowercase();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(AliasError::Config(format!(
                    "{}:{line}: expected `name: address, ...`",
                    path.display()
                )));
            }
            let targets = split_values(values).into_iter().map(target).collect();
            // The last definition wins, as newaliases keeps it.
            entries.insert(name, Entry { line, targets });
        }
        Ok(Aliases {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The number of names defined.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the file defines no name.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Splits on commas outside double quotes.
fn split_values(values: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in values.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn target(value: String) -> Target {
    let v = value.trim_matches('"').trim();
    let v = v
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(v);
    if let Some(rest) = v.strip_prefix(":include:") {
        Target::Include(rest.trim().to_string())
    } else if v.starts_with('|') || v.starts_with('/') {
        Target::Local(v.to_string())
    } else if v.contains('@') {
        Target::Address(v.to_string())
    } else {
        Target::Name(v.to_ascii_lowercase())
    }
}

/// What the local names of one message became.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The recipients, addresses kept and names replaced, in order, without repeats.
    pub rcpts: Vec<String>,
    /// Values skipped (local delivery), each a line for standard error.
    pub warnings: Vec<String>,
}

/// Replaces every recipient without `@` by what its alias names (nested names resolved;
/// a name met again inside its own expansion is not expanded again, as sendmail does),
/// and a name with no alias by `admin`. Addresses with `@` pass unchanged.
pub fn resolve(
    rcpts: &[String],
    aliases: Option<&Aliases>,
    admin: Option<&str>,
) -> Result<Resolved, AliasError> {
    let mut out = Resolved::default();
    for r in rcpts {
        if !is_local_name(r) {
            out.rcpts.push(r.clone());
        } else {
            expand(
                &r.to_ascii_lowercase(),
                aliases,
                admin,
                &mut Walk::default(),
                &mut out,
            )?;
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.rcpts.retain(|r| seen.insert(r.to_ascii_lowercase()));
    Ok(out)
}

/// A user name as cron and logwatch write one (`root`, `www-data`, `first.last`): no `@`,
/// nothing but letters, digits and `.`, `_`, `-`, `+`. Anything else is left for the
/// address check to refuse.
pub fn is_local_name(r: &str) -> bool {
    !r.is_empty()
        && r.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

/// Where the expansion of one recipient stands: the names it is inside of, and each
/// name already expanded with whether that gave any recipient. A name met again is not
/// expanded again (its addresses are already out), so a file whose aliases each name
/// the next several times resolves in as many steps as it has names, not in a number of
/// steps that grows as a power of its depth.
#[derive(Default)]
struct Walk {
    path: Vec<String>,
    done: HashMap<String, bool>,
}

/// Expands `name` into `out`; whether it gave (now or before) any recipient.
fn expand(
    name: &str,
    aliases: Option<&Aliases>,
    admin: Option<&str>,
    walk: &mut Walk,
    out: &mut Resolved,
) -> Result<bool, AliasError> {
    // A name that comes back inside its own expansion (`root: ops@contoso.com, root`,
    // "keep a copy locally"): as Postfix's local(8) does, that copy goes to the local
    // mailbox, which for mailgate is sendmail.admin_address; without one it is dropped
    // (said in the log) and the other members still get the mail.
    if walk.path.iter().any(|p| p == name) {
        return Ok(match admin {
            Some(a) => {
                out.rcpts.push(a.to_string());
                true
            }
            None => {
                out.warnings.push(format!(
                    "{name}: the alias names itself (a copy kept locally); mailgate has no local mailbox and sendmail.admin_address is not set, so that copy is dropped and the other members get the mail"
                ));
                false
            }
        });
    }
    if let Some(&gave) = walk.done.get(name) {
        return Ok(gave);
    }
    let entry = aliases.and_then(|a| a.entries.get(name).map(|e| (a, e)));
    let Some((file, entry)) = entry else {
        return match admin {
            Some(a) => {
                out.rcpts.push(a.to_string());
                Ok(true)
            }
            None => Err(AliasError::NoUser(no_user(name, aliases))),
        };
    };
    if walk.path.len() >= MAX_DEPTH {
        walk.path.push(name.to_string());
        return Err(AliasError::NoUser(format!(
            "{name}: aliases nested more than {MAX_DEPTH} deep in {} ({})",
            file.path.display(),
            walk.path.join(" -> ")
        )));
    }
    walk.path.push(name.to_string());
    let mut gave = false;
    for t in &entry.targets {
        match t {
            Target::Address(a) => {
                out.rcpts.push(a.clone());
                gave = true;
            }
            Target::Name(n) => gave |= expand(n, aliases, admin, walk, out)?,
            Target::Include(f) => {
                return Err(AliasError::Config(format!(
                    "{}:{}: {name}: `:include:{f}` lists are not read by mailgate; write the addresses into the aliases file itself",
                    file.path.display(),
                    entry.line
                )));
            }
            Target::Local(v) => out.warnings.push(format!(
                "{}:{}: {name}: {v:?} is skipped: mailgate relays mail and does not deliver to programs or files",
                file.path.display(),
                entry.line
            )),
        }
    }
    walk.path.pop();
    // An alias whose every value was skipped would lose the mail: the administrator
    // takes it.
    if !gave {
        match admin {
            Some(a) => {
                out.rcpts.push(a.to_string());
                gave = true;
            }
            None => {
                return Err(AliasError::NoUser(format!(
                    "{name}: its alias in {}:{} names no address mailgate can send to, and sendmail.admin_address is not set",
                    file.path.display(),
                    entry.line
                )));
            }
        }
    }
    walk.done.insert(name.to_string(), gave);
    Ok(gave)
}

fn no_user(name: &str, aliases: Option<&Aliases>) -> String {
    match aliases {
        Some(a) => format!(
            "{name}: no such name in {} (sendmail.aliases), and sendmail.admin_address is not set to take mail for other local names",
            a.path.display()
        ),
        None => format!(
            "{name}: a local name needs sendmail.aliases (an aliases file such as /etc/aliases) or sendmail.admin_address (where mail for local names goes); neither is set"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Aliases {
        Aliases::parse(text, Path::new("/etc/aliases")).expect("parses")
    }

    fn names(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nested_names_comments_and_continuations() {
        let a = parse(
            "# See man 5 aliases for format\npostmaster:    root\nroot: ops,\n  \"it@contoso.com\"\n\n# team\nops: <alice@contoso.com>, Bob@Contoso.com\n",
        );
        let r = resolve(&names(&["POSTMASTER"]), Some(&a), None).unwrap();
        assert_eq!(
            r.rcpts,
            names(&["alice@contoso.com", "Bob@Contoso.com", "it@contoso.com"])
        );
    }

    #[test]
    fn a_name_in_its_own_expansion_goes_to_the_admin_address() {
        let a = parse("root: root, ops@contoso.com\nx: y\ny: x\n");
        let r = resolve(&names(&["root"]), Some(&a), Some("it@contoso.com")).unwrap();
        assert_eq!(r.rcpts, names(&["it@contoso.com", "ops@contoso.com"]));
        let r = resolve(&names(&["x"]), Some(&a), Some("it@contoso.com")).unwrap();
        assert_eq!(r.rcpts, names(&["it@contoso.com"]));
        assert!(matches!(
            resolve(&names(&["x"]), Some(&a), None),
            Err(AliasError::NoUser(_))
        ));
    }

    #[test]
    fn keeping_a_copy_locally_without_an_admin_address_drops_only_that_copy() {
        let a = parse("root: ops@contoso.com, root\n");
        let r = resolve(&names(&["root"]), Some(&a), None).unwrap();
        assert_eq!(r.rcpts, names(&["ops@contoso.com"]));
        assert!(r.warnings[0].contains("names itself"), "{:?}", r.warnings);
    }

    #[test]
    fn depth_is_bounded() {
        let text: String = (0..15).map(|i| format!("n{i}: n{}\n", i + 1)).collect();
        let a = parse(&text);
        let e = resolve(&names(&["n0"]), Some(&a), Some("it@contoso.com")).unwrap_err();
        assert!(e.to_string().contains("more than 10 deep"), "{e}");
    }

    #[test]
    fn include_is_refused_and_programs_are_skipped() {
        let a = parse("staff: :include:/etc/staff\nlog: |/usr/bin/logger, /var/log/mail\n");
        let e = resolve(&names(&["staff"]), Some(&a), None).unwrap_err();
        assert!(matches!(e, AliasError::Config(_)));
        assert!(e.to_string().starts_with("/etc/aliases:1: staff:"), "{e}");
        let r = resolve(&names(&["log"]), Some(&a), Some("it@contoso.com")).unwrap();
        assert_eq!(r.rcpts, names(&["it@contoso.com"]));
        assert_eq!(r.warnings.len(), 2);
    }

    #[test]
    fn neither_setting_names_both() {
        let e = resolve(&names(&["root"]), None, None).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("sendmail.aliases") && s.contains("sendmail.admin_address"),
            "{s}"
        );
    }

    #[test]
    fn a_line_without_colon_is_an_error_with_its_line() {
        let e =
            Aliases::parse("root: a@b.c\nbroken line\n", Path::new("/etc/aliases")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/aliases:2: expected `name: address, ...`"
        );
    }
}
