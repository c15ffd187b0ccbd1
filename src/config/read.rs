//! Reading a configuration: where it comes from, the text read into a [`Config`] with
//! every problem located at its line and column, and the errors as they are shown.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::Visitor;
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::provider::{CommonSettings, KindSettings};
use super::{BUILT_IN, Config, ProviderConfig, ProviderKind, SEARCH_PATH};

/// Where a configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file (named, or found on the search path).
    File(PathBuf),
    /// The built-in default.
    BuiltIn,
}

impl Source {
    /// Finds the configuration: `explicit` (from `--config` or `MAILGATE_CONFIG`) when
    /// given, even if it does not exist (loading it is then an error, never a fallback);
    /// else the first file of [`SEARCH_PATH`] that exists; else the built-in default.
    pub fn locate(explicit: Option<&Path>) -> Source {
        if let Some(p) = explicit {
            return Source::File(p.to_path_buf());
        }
        SEARCH_PATH
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .map_or(Source::BuiltIn, |p| Source::File(p.to_path_buf()))
    }

    /// The file, when it is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Source::File(p) => Some(p),
            Source::BuiltIn => None,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::BuiltIn => f.write_str("the built-in default configuration"),
        }
    }
}

/// One problem found in a configuration file, located by line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong, in words for an administrator.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Every problem of one configuration file (at least one).
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 1,
                col: 1,
                message: format!("cannot read the configuration: {e}"),
            }])
        })?;
        Config::parse(&text, path)
    }

    /// Reads and validates the configuration of `source`.
    pub fn load_from(source: &Source) -> Result<Config, ConfigErrors> {
        match source {
            Source::File(p) => Config::load(p),
            Source::BuiltIn => Config::parse(BUILT_IN, Path::new("(built-in default)")),
        }
    }

    /// Parses and validates configuration text; `file` names it in errors. Every problem
    /// is reported in one run, each at the line and column of the key it is about: after
    /// a key that cannot be read, its line is blanked (offsets kept) and the text read
    /// again, so later mistakes are found too; then the checks beyond the syntax run.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
        let locate = |span: Option<Range<usize>>, message: String| {
            let (line, col) = line_col(text, span.map_or(0, |s| s.start));
            ConfigError {
                file: file.to_path_buf(),
                line,
                col,
                message,
            }
        };
        // A syntax error stops the reading there: what follows cannot be trusted.
        if let Err(e) = text.parse::<toml::Table>() {
            return Err(ConfigErrors(vec![locate(
                e.span(),
                e.message().trim().to_string(),
            )]));
        }
        let mut work = text.to_string();
        let mut errors = Vec::new();
        let config = loop {
            match read(&work) {
                Ok(c) => break Some(c),
                Err((span, message)) => {
                    errors.push(locate(span.clone(), with_suggestion(message)));
                    // Blank the key's line(s) and read again, at most 50 times.
                    match span.and_then(|s| blank_key_lines(&mut work, s)) {
                        Some(()) if errors.len() < 50 => {}
                        _ => break None,
                    }
                }
            }
        };
        if let Some(config) = &config {
            for (span, msg) in config.validate() {
                let span = if span.is_empty() && span.start == 0 {
                    key_span(text, &msg).unwrap_or(span)
                } else {
                    span
                };
                errors.push(locate(Some(span), msg));
            }
        }
        match config {
            Some(c) if errors.is_empty() => Ok(c),
            _ => {
                errors.sort_by_key(|e| (e.line, e.col));
                errors.dedup();
                Err(ConfigErrors(errors))
            }
        }
    }
}

/// A problem met while reading: where (a key, a value, a table) and what.
type Problem = (Option<Range<usize>>, String);

fn problem(e: toml::de::Error) -> Problem {
    (e.span(), e.message().trim().to_string())
}

/// The text read into a [`Config`]: every section but `[[provider]]` by serde at once,
/// then each provider by [`read_provider`], so a kind's own keys keep their positions.
fn read(text: &str) -> Result<Config, Problem> {
    let mut doc = DeTable::parse(text).map_err(problem)?;
    let providers = doc.get_mut().remove("provider");
    let mut config = Config::deserialize(toml::de::Deserializer::from(doc)).map_err(problem)?;
    if let Some(list) = providers {
        let span = list.span();
        let DeValue::Array(items) = list.into_inner() else {
            return Err((Some(span), "provider must be [[provider]] tables".into()));
        };
        config.provider = items
            .iter()
            .cloned()
            .map(read_provider)
            .collect::<Result<_, _>>()?;
    }
    Ok(config)
}

/// One `[[provider]]` table: `name`, `kind` (the tag), the keys every kind has, and the
/// kind's own ones; a key the kind does not have is refused at its line, naming the keys
/// it has.
fn read_provider(item: Spanned<DeValue<'_>>) -> Result<ProviderConfig, Problem> {
    let span = item.span();
    let DeValue::Table(table) = item.into_inner() else {
        return Err((Some(span), "provider must be [[provider]] tables".into()));
    };
    let common_keys = fields_of::<CommonSettings>();
    let (mut name, mut kind) = (None, None);
    let (mut common, mut own) = (DeTable::new(), DeTable::new());
    for (k, v) in table {
        match k.get_ref().as_ref() {
            "name" => name = Some(v),
            "kind" => kind = Some(v),
            key if common_keys.contains(&key) => drop(common.insert(k, v)),
            _ => drop(own.insert(k, v)),
        }
    }
    let missing = |key: &str| (Some(span.clone()), format!("missing field `{key}`"));
    let name = name.ok_or_else(|| missing("name"))?;
    let name = Spanned::<String>::deserialize(ValueDeserializer::from(name)).map_err(problem)?;
    let kind = kind.ok_or_else(|| missing("kind"))?;
    let kind = ProviderKind::deserialize(ValueDeserializer::from(kind)).map_err(problem)?;
    let own_keys = KindSettings::keys(kind);
    if let Some((k, _)) = own
        .iter()
        .find(|(k, _)| !own_keys.contains(&k.get_ref().as_ref()))
    {
        let known: Vec<String> = ["name", "kind"]
            .iter()
            .chain(common_keys)
            .chain(own_keys)
            .map(|k| format!("`{k}`"))
            .collect();
        return Err((
            Some(k.span()),
            format!(
                "unknown field `{}` for kind = \"{kind}\", expected one of {}",
                k.get_ref(),
                known.join(", ")
            ),
        ));
    }
    let common = Spanned::new(span.clone(), DeValue::Table(common));
    let own = Spanned::new(span, DeValue::Table(own));
    Ok(ProviderConfig {
        name,
        common: CommonSettings::deserialize(ValueDeserializer::from(common)).map_err(problem)?,
        settings: KindSettings::read(kind, ValueDeserializer::from(own)).map_err(problem)?,
    })
}

/// The field names of a struct that derives `Deserialize` (serde hands them to
/// `deserialize_struct`): the keys of a settings struct, written once, on the struct.
pub(super) fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Fields<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("fields read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// A serde message about an unknown key, with the nearest known key when one is close
/// (`unknown field `per_minut_limit`` ... `did you mean `per_minute_limit`?`).
fn with_suggestion(message: String) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message;
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message;
    };
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (strsim::jaro_winkler(unknown, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, k)) => format!("{message}; did you mean `{k}`?"),
        None => message,
    }
}

/// Blanks (with spaces, newlines kept) every line that `span` touches, when they hold a
/// `key = value` and not a table header; None when there is nothing to blank.
fn blank_key_lines(text: &mut String, span: Range<usize>) -> Option<()> {
    let start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let end = text[span.end.min(text.len())..]
        .find('\n')
        .map_or(text.len(), |i| span.end.min(text.len()) + i);
    let chunk = &text[start..end];
    if chunk.trim_start().starts_with('[') || chunk.trim().is_empty() {
        return None;
    }
    let blank: String = chunk
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    text.replace_range(start..end, &blank);
    Some(())
}

/// The span of the key a check's message starts with (`distributor.retry_initial ...`):
/// the key's line under its table header.
fn key_span(text: &str, message: &str) -> Option<Range<usize>> {
    let first = message.split_whitespace().next()?;
    let (table, key) = first.rsplit_once('.')?;
    let key = key.trim_end_matches([',', ':', ';']);
    let mut current = String::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[') {
            current = h
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim()
                .to_string();
        } else if current == table
            && let Some(rest) = t.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            let col = line.len() - line.trim_start().len();
            return Some(offset + col..offset + col + key.len());
        }
        offset += line.len();
    }
    None
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
