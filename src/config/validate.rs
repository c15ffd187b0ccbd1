//! Semantic checks of a parsed configuration that the schema cannot express: references
//! between sections, exclusive settings, and what a provider kind needs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;

use super::{Config, ProviderConfig, ProviderKind};

impl Config {
    /// Semantic checks the schema cannot express; each problem with its byte span.
    pub(super) fn validate(&self) -> Vec<(Range<usize>, String)> {
        let mut out = Vec::new();
        if self.smtp.listen.is_empty() {
            out.push((0..0, "smtp.listen needs at least one address".into()));
        }
        for l in &self.smtp.listen {
            if l.get_ref().parse::<SocketAddr>().is_err() {
                out.push((
                    l.span(),
                    format!(
                        "invalid listen address {:?}: expected IP:PORT such as 127.0.0.1:2525 or [::1]:2525",
                        l.get_ref()
                    ),
                ));
            }
        }
        match (&self.smtp.tls_cert, &self.smtp.tls_key) {
            (Some(c), None) => out.push((c.span(), "tls_cert is set but tls_key is not".into())),
            (None, Some(k)) => out.push((k.span(), "tls_key is set but tls_cert is not".into())),
            _ => {}
        }
        if self.smtp.max_connections == 0 {
            out.push((0..0, "smtp.max_connections must be at least 1".into()));
        }
        match self.status.listen_addr() {
            None => out.push((
                self.status.listen.span(),
                format!(
                    "invalid status listen address {:?}",
                    self.status.listen.get_ref()
                ),
            )),
            Some(addr)
                if !addr.ip().is_loopback()
                    && self.status.token.is_none()
                    && self.status.token_file.is_none() =>
            {
                out.push((
                    self.status.listen.span(),
                    "status.listen is not a loopback address: set status.token_file so the admin API is not open to the network".into(),
                ));
            }
            Some(_) => {}
        }
        // An empty token would open the API to anyone sending an empty bearer token.
        if self
            .status
            .token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            out.push((
                0..0,
                "status.token is empty: set a long random token, or remove the key".into(),
            ));
        }
        // Checked when readable: commands run by other users (sendmail from cron) load
        // this file too and must not fail on a token only the daemon may read.
        if let Some(f) = &self.status.token_file
            && let Ok(t) = std::fs::read_to_string(f)
            && t.trim().is_empty()
        {
            out.push((
                0..0,
                format!("status.token_file {} is empty: write a long random token into it (for example `openssl rand -hex 32 > {}`)", f.display(), f.display()),
            ));
        }
        let d = &self.distributor;
        if d.retry_initial.0.is_zero() || d.retry_initial > d.retry_max {
            out.push((
                0..0,
                "distributor.retry_initial must be above zero and not above retry_max".into(),
            ));
        }
        let mut names = HashSet::new();
        for p in &self.provider {
            if !names.insert(p.name.get_ref().as_str()) {
                out.push((
                    p.name.span(),
                    format!("duplicate provider name {:?}", p.name.get_ref()),
                ));
            }
            out.extend(validate_provider(p));
            if let Some(f) = &p.tls_fingerprint
                && let Err(e) = crate::provider::smtp::tls::parse_fingerprint(f)
            {
                out.push((
                    p.name.span(),
                    format!("provider {:?}: {e}", p.name.get_ref()),
                ));
            }
        }
        if self.provider(d.default_provider.get_ref()).is_none() {
            out.push((
                d.default_provider.span(),
                format!(
                    "default_provider {:?} names no [[provider]]",
                    d.default_provider.get_ref()
                ),
            ));
        }
        let mut users = HashSet::new();
        let mut logins = HashSet::new();
        for u in &self.user {
            if !users.insert(u.name.get_ref().as_str()) {
                out.push((
                    u.name.span(),
                    format!("duplicate user name {:?}", u.name.get_ref()),
                ));
            }
            if let Some(login) = &u.login {
                if !logins.insert(login.as_str()) {
                    out.push((u.name.span(), format!("duplicate user login {login:?}")));
                }
                if u.password_hash.is_none() {
                    out.push((
                        u.name.span(),
                        format!("user {:?} has a login but no password_hash (make one with `mailgate hash-password`)", u.name.get_ref()),
                    ));
                }
            }
            if let Some(p) = &u.provider
                && self.provider(p.get_ref()).is_none()
            {
                out.push((
                    p.span(),
                    format!("provider {:?} names no [[provider]]", p.get_ref()),
                ));
            }
        }
        out
    }
}

fn validate_provider(p: &ProviderConfig) -> Vec<(Range<usize>, String)> {
    let mut out = Vec::new();
    let span = p.name.span();
    let name = p.name.get_ref();
    let secrets = [
        p.password.is_some(),
        p.password_file.is_some(),
        p.password_env.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if secrets > 1 {
        out.push((
            span.clone(),
            format!("provider {name:?}: set only one of password, password_file, password_env"),
        ));
    }
    if p.max_connections == 0 {
        out.push((
            span.clone(),
            format!("provider {name:?}: max_connections must be at least 1"),
        ));
    }
    match p.kind {
        ProviderKind::Eml => {
            if p.directory.is_none() {
                out.push((
                    span.clone(),
                    format!("provider {name:?}: kind = \"eml\" needs directory"),
                ));
            }
        }
        ProviderKind::Smtp => {
            if p.host.as_deref().is_none_or(str::is_empty) {
                out.push((
                    span.clone(),
                    format!("provider {name:?}: kind = \"smtp\" needs host"),
                ));
            }
            if p.oauth2.is_some() && p.username.is_none() {
                out.push((
                    span.clone(),
                    format!("provider {name:?}: [provider.oauth2] needs username (the mailbox to send as)"),
                ));
            }
        }
        ProviderKind::Graph => {
            if p.oauth2.is_none() {
                out.push((
                    span.clone(),
                    format!("provider {name:?}: kind = \"graph\" needs a [provider.oauth2] table"),
                ));
            }
        }
    }
    if let Some(o) = &p.oauth2 {
        if o.client_id.is_none() {
            out.push((
                span.clone(),
                format!("provider {name:?}: [provider.oauth2] needs client_id"),
            ));
        }
        if o.tenant_id.is_none() && o.token_url.is_none() {
            out.push((
                span.clone(),
                format!("provider {name:?}: [provider.oauth2] needs tenant_id or token_url"),
            ));
        }
        let secrets = [
            o.client_secret.is_some(),
            o.client_secret_file.is_some(),
            o.client_secret_env.is_some(),
            o.certificate_file.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if secrets != 1 {
            out.push((span.clone(), format!("provider {name:?}: [provider.oauth2] needs exactly one of client_secret, client_secret_file, client_secret_env, certificate_file")));
        }
        if o.certificate_file.is_some() != o.private_key_file.is_some() {
            out.push((span, format!("provider {name:?}: [provider.oauth2] certificate_file and private_key_file go together")));
        }
    }
    out
}
