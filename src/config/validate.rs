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
        if let Some(f) = &self.fleet
            && f.ca_file.is_some()
            && !f.redis_url.starts_with("rediss://")
        {
            out.push((
                0..0,
                "fleet.ca_file is for a TLS connection: it needs redis_url = \"rediss://...\""
                    .into(),
            ));
        }
        if let Some(u) = self.fleet.as_ref().and_then(|f| f.status_url.as_deref())
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            out.push((
                0..0,
                format!("fleet.status_url {u:?} must be an http:// or https:// URL"),
            ));
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
        if let Some(a) = &self.sendmail.admin_address
            && crate::address::check_address(a.get_ref(), true).is_err()
        {
            out.push((
                a.span(),
                format!(
                    "sendmail.admin_address {:?} is not an address: write user@domain",
                    a.get_ref()
                ),
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
                && let Err(e) = super::provider::parse_fingerprint(f)
            {
                out.push((
                    p.name.span(),
                    format!("provider {:?}: {e}", p.name.get_ref()),
                ));
            }
        }
        out.extend(self.chain_problems());
        out.extend(self.alert_problems());
        if let Some(f) = &self.notify.from
            && crate::address::check_address(f.get_ref(), false).is_err()
        {
            out.push((
                f.span(),
                format!(
                    "notify.from {:?} is not an address: write user@domain",
                    f.get_ref()
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
        }
        out
    }
}

fn validate_provider(p: &ProviderConfig) -> Vec<(Range<usize>, String)> {
    let mut out = Vec::new();
    let span = p.name.span();
    let name = p.name.get_ref();
    if let Some(why) = p.password_source().problem() {
        out.push((span.clone(), format!("provider {name:?}: {why}")));
    }
    if p.max_connections == 0 {
        out.push((
            span.clone(),
            format!("provider {name:?}: max_connections must be at least 1"),
        ));
    }
    for problem in p.kind_problems() {
        out.push((span.clone(), format!("provider {name:?}: {problem}")));
    }
    if let Some(o) = &p.oauth2 {
        for problem in oauth2_problems(p, o) {
            out.push((span.clone(), format!("provider {name:?}: {problem}")));
        }
    }
    out
}

/// The combinations of `[provider.oauth2]` keys that cannot work, each in one sentence.
fn oauth2_problems(p: &ProviderConfig, o: &crate::config::OAuth2Config) -> Vec<String> {
    use crate::config::{Issuer, OAuthFlow};
    let mut out = Vec::new();
    let flow = o.flow.as_str();
    let google = p.oauth_issuer() == Issuer::Google;
    let secrets = o.client_secret_source().given();
    if o.certificate_file.is_some() != o.private_key_file.is_some() {
        out.push("[provider.oauth2] certificate_file and private_key_file go together".into());
    }
    if let Some(why) = o.client_secret_source().problem() {
        out.push(format!("[provider.oauth2] {why}"));
    }
    if let Some(d) = &o.client_secret_expires
        && crate::time::parse_rfc3339(&format!("{d}T00:00:00Z")).is_none()
    {
        out.push(format!(
            "[provider.oauth2] client_secret_expires {d:?} is not a date: write YYYY-MM-DD"
        ));
    }
    if o.flow != OAuthFlow::JwtBearer {
        if o.client_id.is_none() {
            out.push("[provider.oauth2] needs client_id".into());
        }
        for (set, key) in [
            (o.service_account_file.is_some(), "service_account_file"),
            (o.subject.is_some(), "subject"),
        ] {
            if set {
                out.push(format!(
                    "[provider.oauth2] {key} is only for flow = \"jwt_bearer\" (this provider has flow = \"{flow}\")"
                ));
            }
        }
    }
    let microsoft_urls =
        |urls: &[&Option<String>]| o.tenant_id.is_some() || urls.iter().all(|u| u.is_some());
    match o.flow {
        OAuthFlow::ClientCredentials => {
            if o.tenant_id.is_none() && o.token_url.is_none() {
                out.push("[provider.oauth2] needs tenant_id or token_url".into());
            }
            if secrets + usize::from(o.certificate_file.is_some()) != 1 {
                out.push("[provider.oauth2] needs exactly one of client_secret, client_secret_file, client_secret_env, certificate_file".into());
            }
        }
        OAuthFlow::DeviceCode => {
            if google && o.device_code_url.is_none() {
                out.push("[provider.oauth2] flow = \"device_code\" does not work with Gmail: Google's device flow does not allow the https://mail.google.com/ scope; use flow = \"authorization_code\"".into());
            } else if !google && !microsoft_urls(&[&o.token_url, &o.device_code_url]) {
                out.push("[provider.oauth2] flow = \"device_code\" needs tenant_id (the tenant's ID or domain, or \"consumers\" for Outlook.com and Hotmail accounts)".into());
            }
            if secrets > 0 || o.certificate_file.is_some() {
                out.push("[provider.oauth2] flow = \"device_code\" is a public client flow: remove client_secret, client_secret_file, client_secret_env and certificate_file (Microsoft refuses a public client that sends a secret with AADSTS700025)".into());
            }
        }
        OAuthFlow::AuthorizationCode => {
            if !google && !microsoft_urls(&[&o.token_url, &o.authorize_url]) {
                out.push("[provider.oauth2] flow = \"authorization_code\" needs tenant_id (the tenant's ID or domain, or \"consumers\" for Outlook.com and Hotmail accounts)".into());
            }
            if google && secrets == 0 {
                out.push("[provider.oauth2] flow = \"authorization_code\" with Gmail needs the Desktop app client's client_secret (client_secret, client_secret_file or client_secret_env; it is in the client JSON Google Cloud offers for download)".into());
            }
            if o.certificate_file.is_some() {
                out.push(
                    "[provider.oauth2] certificate_file is only for flow = \"client_credentials\""
                        .into(),
                );
            }
        }
        OAuthFlow::JwtBearer => {
            if p.kind != ProviderKind::Smtp {
                out.push("[provider.oauth2] flow = \"jwt_bearer\" (a Google service account) needs kind = \"smtp\"".into());
            }
            if o.service_account_file.is_none() {
                out.push("[provider.oauth2] flow = \"jwt_bearer\" needs service_account_file (the service account's JSON key)".into());
            }
            if o.subject.is_none() {
                out.push("[provider.oauth2] flow = \"jwt_bearer\" needs subject (the Workspace mailbox the service account sends as)".into());
            }
            if secrets > 0 || o.certificate_file.is_some() {
                out.push("[provider.oauth2] flow = \"jwt_bearer\" signs with the service account key: remove client_secret, client_secret_file, client_secret_env and certificate_file".into());
            }
        }
    }
    out
}
