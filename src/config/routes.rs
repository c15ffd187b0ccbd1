//! Provider chains and `[[route]]` (SPEC "Routes and fallback"): which ordered list of
//! providers a recipient's mail takes. Each recipient takes the first route whose
//! `recipients` match it, else its user's chain, else the default chain.

use std::collections::HashMap;
use std::ops::Range;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::Config;

/// `[[route]]`: recipients that take their own chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Shown in the history, the log and the dashboard.
    pub name: Spanned<String>,
    /// Addresses or `*@domain`, matched without regard to case.
    #[serde(default)]
    pub recipients: Vec<Spanned<String>>,
    /// The chain: the first provider, then its fallbacks.
    #[serde(default)]
    pub providers: Vec<Spanned<String>>,
}

/// The chains of one configuration, resolved to provider names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chains {
    default: Vec<String>,
    users: HashMap<String, Vec<String>>,
    routes: Vec<(String, Vec<String>, Vec<String>)>,
}

impl Chains {
    /// The chains of `c`.
    pub fn from_config(c: &Config) -> Chains {
        Chains {
            default: c.default_chain(),
            users: c
                .user
                .iter()
                .filter_map(|u| {
                    let chain = names(u.providers.as_deref().unwrap_or(u.provider.as_slice()))?;
                    Some((u.name.get_ref().clone(), chain))
                })
                .collect(),
            routes: c
                .route
                .iter()
                .map(|r| {
                    (
                        r.name.get_ref().clone(),
                        r.recipients
                            .iter()
                            .map(|p| p.get_ref().to_ascii_lowercase())
                            .collect(),
                        r.providers.iter().map(|p| p.get_ref().clone()).collect(),
                    )
                })
                .collect(),
        }
    }

    /// The chain a recipient of `user`'s mail takes, and the route that chose it.
    pub fn chain(&self, user: Option<&str>, rcpt: &str) -> (&[String], Option<&str>) {
        let rcpt = rcpt.to_ascii_lowercase();
        if let Some((name, _, providers)) = self
            .routes
            .iter()
            .find(|(_, patterns, _)| patterns.iter().any(|p| matches(p, &rcpt)))
        {
            return (providers, Some(name));
        }
        let chain = user
            .and_then(|u| self.users.get(u))
            .unwrap_or(&self.default);
        (chain, None)
    }

    /// The default chain.
    pub fn default_chain(&self) -> &[String] {
        &self.default
    }

    /// Every route as (name, patterns, providers), in order.
    pub fn routes(&self) -> &[(String, Vec<String>, Vec<String>)] {
        &self.routes
    }
}

fn names(list: &[Spanned<String>]) -> Option<Vec<String>> {
    (!list.is_empty()).then(|| list.iter().map(|p| p.get_ref().clone()).collect())
}

/// Whether a lower-case recipient matches a lower-case pattern (`a@b` or `*@b`).
fn matches(pattern: &str, rcpt: &str) -> bool {
    match pattern.strip_prefix("*@") {
        Some(domain) => rcpt.rsplit_once('@').is_some_and(|(_, d)| d == domain),
        None => pattern == rcpt,
    }
}

impl Config {
    /// The default chain: `distributor.default_providers`, else `default_provider`.
    pub fn default_chain(&self) -> Vec<String> {
        let d = &self.distributor;
        match &d.default_providers {
            Some(list) if !list.is_empty() => list.iter().map(|p| p.get_ref().clone()).collect(),
            _ => vec![d.default_provider.get_ref().clone()],
        }
    }

    /// The problems of the chains and routes (SPEC "Routes and fallback").
    pub(super) fn chain_problems(&self) -> Vec<(Range<usize>, String)> {
        let mut out = Vec::new();
        let d = &self.distributor;
        if let Some(list) = &d.default_providers {
            if d.default_provider.span() != (0..0) {
                out.push((
                    d.default_provider.span(),
                    "distributor: set default_provider or default_providers, not both".into(),
                ));
            }
            out.extend(self.chain_list_problems("distributor.default_providers", list, 0..0));
        } else if self.provider(d.default_provider.get_ref()).is_none() {
            out.push((
                d.default_provider.span(),
                format!(
                    "default_provider {:?} names no [[provider]]",
                    d.default_provider.get_ref()
                ),
            ));
        }
        for u in &self.user {
            let what = format!("user {:?}", u.name.get_ref());
            match (&u.provider, &u.providers) {
                (Some(p), Some(_)) => out.push((
                    p.span(),
                    format!("{what}: set provider or providers, not both"),
                )),
                (Some(p), None) if self.provider(p.get_ref()).is_none() => out.push((
                    p.span(),
                    format!("provider {:?} names no [[provider]]", p.get_ref()),
                )),
                (None, Some(list)) => out.extend(self.chain_list_problems(
                    &format!("{what} providers"),
                    list,
                    u.name.span(),
                )),
                _ => {}
            }
        }
        let mut route_names = std::collections::HashSet::new();
        for r in &self.route {
            let what = format!("route {:?}", r.name.get_ref());
            if !route_names.insert(r.name.get_ref().as_str()) {
                out.push((
                    r.name.span(),
                    format!("duplicate route name {:?}", r.name.get_ref()),
                ));
            }
            if r.recipients.is_empty() {
                out.push((
                    r.name.span(),
                    format!("{what} has no recipients: list addresses or *@domain patterns"),
                ));
            }
            for p in &r.recipients {
                if !pattern_ok(p.get_ref()) {
                    out.push((
                        p.span(),
                        format!(
                            "{what}: recipient {:?} is neither an address (user@domain) nor *@domain",
                            p.get_ref()
                        ),
                    ));
                }
            }
            out.extend(self.chain_list_problems(
                &format!("{what} providers"),
                &r.providers,
                r.name.span(),
            ));
        }
        out
    }

    /// A chain must name at least one provider, only known ones, each once.
    fn chain_list_problems(
        &self,
        what: &str,
        list: &[Spanned<String>],
        empty_span: Range<usize>,
    ) -> Vec<(Range<usize>, String)> {
        let mut out = Vec::new();
        if list.is_empty() {
            out.push((
                empty_span,
                format!("{what} is empty: name at least one [[provider]]"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for p in list {
            let name = p.get_ref();
            if self.provider(name).is_none() {
                out.push((p.span(), format!("{what}: {}", self.no_such_provider(name))));
            } else if !seen.insert(name.as_str()) {
                out.push((
                    p.span(),
                    format!("{what}: provider {name:?} is named twice in one chain"),
                ));
            }
        }
        out
    }
}

fn pattern_ok(p: &str) -> bool {
    match p.strip_prefix("*@") {
        Some(domain) => !domain.is_empty() && !domain.contains('@') && !domain.contains('*'),
        None => crate::address::check_address(p, true).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_wins_over_the_user_chain_which_wins_over_the_default() {
        let c = Config::parse(
            r#"
[distributor]
default_providers = ["a", "b"]
[[provider]]
name = "a"
kind = "eml"
directory = "a"
[[provider]]
name = "b"
kind = "eml"
directory = "b"
[[provider]]
name = "c"
kind = "eml"
directory = "c"
[[user]]
name = "erp"
providers = ["b", "c"]
[[route]]
name = "internal"
recipients = ["*@Contoso.com", "boss@example.com"]
providers = ["c"]
"#,
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let ch = Chains::from_config(&c);
        assert_eq!(ch.chain(None, "x@example.com").0, ["a", "b"]);
        assert_eq!(ch.chain(Some("erp"), "x@example.com").0, ["b", "c"]);
        assert_eq!(
            ch.chain(Some("erp"), "x@contoso.COM"),
            (&["c".to_string()][..], Some("internal"))
        );
        assert_eq!(ch.chain(None, "Boss@example.com").1, Some("internal"));
        assert_eq!(ch.chain(None, "x@sub.contoso.com").0, ["a", "b"]);
    }
}
