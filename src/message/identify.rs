//! Who sent it: the user of a message, found by its SMTP AUTH login, else by the
//! envelope sender, then the header From, matched against each user's `email` and
//! `match_senders` (exact, or `*@domain`); and the sender the world should see.

use crate::config::{Config, SendMode, UserConfig};

/// Whether `addr` matches a `match_senders` pattern (exact or `*@domain`), ignoring case.
pub fn pattern_matches(pattern: &str, addr: &str) -> bool {
    match pattern.strip_prefix("*@") {
        Some(domain) => addr
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
        None => pattern.eq_ignore_ascii_case(addr),
    }
}

fn user_matches(u: &UserConfig, addr: &str) -> bool {
    !addr.is_empty()
        && (u
            .email
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case(addr))
            || u.match_senders.iter().any(|p| pattern_matches(p, addr)))
}

/// The user of a submission, if any.
pub fn identify<'a>(
    users: &'a [UserConfig],
    auth_login: Option<&str>,
    envelope_from: &str,
    header_from: Option<&str>,
) -> Option<&'a UserConfig> {
    if let Some(login) = auth_login
        && let Some(u) = users.iter().find(|u| u.login.as_deref() == Some(login))
    {
        return Some(u);
    }
    users
        .iter()
        .find(|u| user_matches(u, envelope_from))
        .or_else(|| header_from.and_then(|h| users.iter().find(|u| user_matches(u, h))))
}

/// What to do with the sender of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderPlan {
    /// The identified user's name.
    pub user: Option<String>,
    /// The From address the world sees (None: nothing is rewritten).
    pub target: Option<String>,
    /// For on-behalf-of: the provider account named in `Sender:` and the envelope.
    pub on_behalf_of: Option<String>,
    /// The envelope sender to relay with.
    pub envelope_from: String,
    /// The provider that takes the message.
    pub provider: String,
}

/// Applies the rules of SPEC "Who sent it" to one submission.
pub fn plan(
    config: &Config,
    auth_login: Option<&str>,
    envelope_from: &str,
    header_from: Option<&str>,
) -> SenderPlan {
    plan_for(config, None, auth_login, envelope_from, header_from)
}

/// [`plan`], with the user named outright when `as_user` is given (admin `send --as`).
pub fn plan_for(
    config: &Config,
    as_user: Option<&str>,
    auth_login: Option<&str>,
    envelope_from: &str,
    header_from: Option<&str>,
) -> SenderPlan {
    let named = as_user.and_then(|n| config.user.iter().find(|u| u.name.get_ref() == n));
    let user = named.or_else(|| identify(&config.user, auth_login, envelope_from, header_from));
    let target = match user {
        Some(u) => u.sender_email.clone().or_else(|| u.email.clone()),
        None => config.rewrite.default_sender.clone(),
    };
    // The first provider of the user's chain, else of the default chain: its account is
    // the one an on-behalf-of Sender names.
    let provider = user
        .and_then(|u| {
            u.providers
                .as_ref()
                .and_then(|l| l.first())
                .or(u.provider.as_ref())
                .map(|p| p.get_ref().clone())
        })
        .or_else(|| config.default_chain().into_iter().next())
        .unwrap_or_default();
    let mode = user.map_or(SendMode::SendAs, |u| u.send_mode);
    let account = config
        .provider(&provider)
        .and_then(|p| p.username().map(String::from));
    let (on_behalf_of, envelope) = match (&target, mode) {
        (None, _) => (None, envelope_from.to_string()),
        (Some(t), SendMode::SendAs) => (None, t.clone()),
        (Some(t), SendMode::OnBehalfOf) => match account {
            Some(a) if !a.eq_ignore_ascii_case(t) => (Some(a.clone()), a),
            _ => (None, t.clone()),
        },
    };
    SenderPlan {
        user: user.map(|u| u.name.get_ref().clone()),
        target,
        on_behalf_of,
        envelope_from: envelope,
        provider,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            r#"
[rewrite]
default_sender = "noreply@contoso.com"
[[provider]]
name = "outbox"
kind = "eml"
directory = "o"
[[provider]]
name = "o365"
kind = "smtp"
host = "smtp.office365.com"
username = "relay@contoso.com"
[[user]]
name = "erp"
login = "erp"
password_hash = "x"
email = "erp@contoso.com"
sender_email = "billing@contoso.com"
provider = "o365"
match_senders = ["noreply@erp.local", "*@legacy.local"]
[[user]]
name = "scanner"
email = "scanner@contoso.com"
send_mode = "on-behalf-of"
provider = "o365"
"#,
            Path::new("t"),
        )
        .unwrap()
    }

    #[test]
    fn identification_order() {
        let c = config();
        let by_auth = plan(&c, Some("erp"), "x@y.z", None);
        assert_eq!(by_auth.user.as_deref(), Some("erp"));
        assert_eq!(by_auth.target.as_deref(), Some("billing@contoso.com"));
        assert_eq!(by_auth.envelope_from, "billing@contoso.com");
        assert_eq!(by_auth.provider, "o365");
        assert_eq!(
            plan(&c, None, "NoReply@ERP.local", None).user.as_deref(),
            Some("erp")
        );
        assert_eq!(
            plan(&c, None, "any@Legacy.Local", None).user.as_deref(),
            Some("erp")
        );
        assert_eq!(
            plan(&c, None, "", Some("scanner@contoso.com"))
                .user
                .as_deref(),
            Some("scanner")
        );
        let none = plan(&c, None, "who@else.com", Some("who@else.com"));
        assert_eq!(none.user, None);
        assert_eq!(none.target.as_deref(), Some("noreply@contoso.com"));
        assert_eq!(none.provider, "outbox");
    }

    #[test]
    fn on_behalf_of_uses_the_account() {
        let p = plan(&config(), None, "scanner@contoso.com", None);
        assert_eq!(p.target.as_deref(), Some("scanner@contoso.com"));
        assert_eq!(p.on_behalf_of.as_deref(), Some("relay@contoso.com"));
        assert_eq!(p.envelope_from, "relay@contoso.com");
    }

    #[test]
    fn no_target_leaves_everything() {
        let mut c = config();
        c.rewrite.default_sender = None;
        let p = plan(&c, None, "app@x.local", None);
        assert_eq!(p.target, None);
        assert_eq!(p.envelope_from, "app@x.local");
    }
}
