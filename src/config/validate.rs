//! Semantic checks of a parsed configuration that the schema cannot express: references
//! between sections, exclusive settings, and what a provider kind needs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;

use super::{Config, ProviderConfig, ProviderKind};

impl Config {
    /// Semantic checks the schema cannot express; each problem with its byte span.
    pub(super) fn validate(&self) -> Vec<(Range<usize>, String)> {
        let mut out = self.smtp_problems();
        out.extend(self.fleet_section_problems());
        out.extend(self.status_problems());
        out.extend(self.delivery_problems());
        out.extend(self.provider_problems());
        out.extend(self.chain_problems());
        out.extend(self.alert_problems());
        out.extend(self.user_problems());
        out
    }

    /// `[smtp]`: the listen addresses, the TLS pair, the connection limit.
    fn smtp_problems(&self) -> Vec<(Range<usize>, String)> {
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
        out
    }

    /// `[fleet]`: the Redis connection and the fleet secret.
    fn fleet_section_problems(&self) -> Vec<(Range<usize>, String)> {
        let mut out = Vec::new();
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
        if let Some(f) = &self.fleet {
            out.extend(
                fleet_problems(f, self.status.token.as_deref(), &self.token_path())
                    .into_iter()
                    .map(|m| (0..0, m)),
            );
        }
        out
    }

    /// `[status]`: the TLS pair, the listen address beyond loopback, the token.
    fn status_problems(&self) -> Vec<(Range<usize>, String)> {
        let mut out = Vec::new();
        match (&self.status.tls_cert, &self.status.tls_key) {
            (Some(_), None) => out.push((
                0..0,
                "status.tls_cert is set but status.tls_key is not".into(),
            )),
            (None, Some(_)) => out.push((
                0..0,
                "status.tls_key is set but status.tls_cert is not".into(),
            )),
            _ => {}
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
                    && self.status.tls_cert.is_none()
                    && !self.status.behind_proxy =>
            {
                out.push((
                    self.status.listen.span(),
                    "status.listen is not a loopback address: set status.tls_cert and status.tls_key (`mailgate gen-cert` makes a pair) so the admin token never crosses the network in clear, or behind_proxy = true when a TLS proxy stands in front".into(),
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
        out
    }

    /// The addresses and times of delivery: `sendmail.admin_address`, the retry times, `notify.from`.
    fn delivery_problems(&self) -> Vec<(Range<usize>, String)> {
        let mut out = Vec::new();
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
        out
    }

    /// `[[provider]]`: unique names, each provider's own checks, a pinned fingerprint.
    fn provider_problems(&self) -> Vec<(Range<usize>, String)> {
        let mut out = Vec::new();
        let mut names = HashSet::new();
        for p in &self.provider {
            if !names.insert(p.name.get_ref().as_str()) {
                out.push((
                    p.name.span(),
                    format!("duplicate provider name {:?}", p.name.get_ref()),
                ));
            }
            out.extend(validate_provider(p));
            if let Some(f) = p.smtp().and_then(|s| s.tls_fingerprint.as_ref())
                && let Err(e) = super::provider::parse_fingerprint(f)
            {
                out.push((
                    p.name.span(),
                    format!("provider {:?}: {e}", p.name.get_ref()),
                ));
            }
        }
        out
    }

    /// `[[user]]`: unique names and logins, a login's password hash.
    fn user_problems(&self) -> Vec<(Range<usize>, String)> {
        let mut out = Vec::new();
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
    if let Some(why) = p.smtp().and_then(|s| s.password_source().problem()) {
        out.push((span.clone(), format!("provider {name:?}: {why}")));
    }
    if p.common.max_connections == 0 {
        out.push((
            span.clone(),
            format!("provider {name:?}: max_connections must be at least 1"),
        ));
    }
    for problem in p.kind_problems() {
        out.push((span.clone(), format!("provider {name:?}: {problem}")));
    }
    if let Some(o) = p.oauth2() {
        for problem in oauth2_problems(p, o) {
            out.push((span.clone(), format!("provider {name:?}: {problem}")));
        }
    }
    out
}

/// The combinations of `[provider.oauth2]` keys that cannot work, each in one sentence.
fn oauth2_problems(p: &ProviderConfig, o: &crate::config::OAuth2Config) -> Vec<String> {
    use crate::config::OAuthFlow;
    let mut out = Vec::new();
    let flow = o.flow.as_str();
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
        if o.client_id.is_none() && !o.flow.is_secretless() {
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
    if o.federated_token_file.is_some() && o.flow != OAuthFlow::WorkloadIdentity {
        out.push(format!(
            "[provider.oauth2] federated_token_file is only for flow = \"workload-identity\" (this provider has flow = \"{flow}\")"
        ));
    }
    out.extend(flow_problems(p, o));
    out
}

/// What the provider's OAuth2 flow needs and must not have.
fn flow_problems(p: &ProviderConfig, o: &crate::config::OAuth2Config) -> Vec<String> {
    use crate::config::{Issuer, OAuthFlow};
    let mut out = Vec::new();
    let google = p.oauth_issuer() == Issuer::Google;
    let secrets = o.client_secret_source().given();
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
        OAuthFlow::ManagedIdentity | OAuthFlow::WorkloadIdentity => {
            let flow = o.flow.as_str();
            if google {
                out.push(format!("[provider.oauth2] flow = \"{flow}\" is Microsoft's (Entra ID): it does not sign in to Google"));
            }
            if secrets > 0 || o.certificate_file.is_some() {
                out.push(format!("[provider.oauth2] flow = \"{flow}\" has no secret of its own (the identity is the machine's or the pod's): remove client_secret, client_secret_file, client_secret_env and certificate_file"));
            }
            if o.flow == OAuthFlow::ManagedIdentity && o.tenant_id.is_some() {
                out.push("[provider.oauth2] flow = \"managed-identity\" takes no tenant_id: the identity belongs to the machine's tenant (client_id names a user-assigned identity)".into());
            }
        }
        OAuthFlow::JwtBearer => {
            if p.kind() != ProviderKind::Smtp {
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

/// The fleet secret's least length, in bytes.
pub const MIN_FLEET_SECRET: usize = 32;

/// What is wrong with `[fleet]`: `status_url`'s form, and the secret that signs calls
/// between nodes (required with `status_url`, long enough, not readable by others, not
/// the admin token).
fn fleet_problems(
    f: &super::FleetConfig,
    token: Option<&str>,
    token_file: &std::path::Path,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(u) = f.status_url.as_deref()
        && let Err(why) = peer_url(u)
    {
        out.push(format!("fleet.status_url {u:?} {why}"));
    }
    match (&f.secret_file, &f.status_url) {
        (None, Some(_)) => out.push(
            "fleet.status_url needs fleet.secret_file: the nodes sign their calls to each other with it (the same file on every node, at least 32 bytes: `head -c 48 /dev/urandom | base64 > /etc/mailgate/fleet.secret`)".into(),
        ),
        (Some(p), _) => {
            // Checked when readable: commands run by other users load this file too.
            if let Ok(secret) = std::fs::read(p) {
                let secret = secret.trim_ascii();
                if secret.len() < MIN_FLEET_SECRET {
                    out.push(format!(
                        "fleet.secret_file {} holds {} bytes: it needs at least {MIN_FLEET_SECRET} (`head -c 48 /dev/urandom | base64 > {}`)",
                        p.display(),
                        secret.len(),
                        p.display()
                    ));
                }
                // The admin token wherever it is (inline, its file, or the one the daemon
                // made beside the store).
                let admin = token.map(|t| t.trim().as_bytes().to_vec()).or_else(|| {
                    std::fs::read(token_file)
                        .ok()
                        .map(|t| t.trim_ascii().to_vec())
                });
                if admin.is_some_and(|a| a == secret) {
                    out.push(format!(
                        "fleet.secret_file {} holds the admin token: the fleet secret must be another secret (a node that can sign fleet calls must not be able to act as the administrator)",
                        p.display()
                    ));
                }
            }
            if let Some(why) = readable_by_others(p) {
                out.push(format!("fleet.secret_file {} {why}", p.display()));
            }
        }
        (None, None) => {}
    }
    out
}

/// Whether a file that holds a secret can be read by every local user: the words, or
/// None.
pub fn readable_by_others(p: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "is readable by every local user (mode {:o}): `chmod 0640 {}`",
            mode & 0o777,
            p.display()
        )
    })
}

/// Whether `u` may be a node's `status_url`: `https://host[:port]`, or `http://` to a
/// loopback address; no path, query, fragment or user. Err: why not, in words.
pub fn peer_url(u: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(u).map_err(|e| format!("is not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold a user name or password".into());
    }
    if url.query().is_some() || url.fragment().is_some() || !matches!(url.path(), "" | "/") {
        return Err("must be the listener's origin only (scheme, host, port), without a path, query or fragment".into());
    }
    let loopback = url.host_str().is_some_and(loopback_host);
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err("must be https:// (http:// only to a loopback address): the nodes' calls to each other cross the network".into()),
        _ => Err("must be an https:// URL".into()),
    }
}

/// A URL's host that names this machine: a loopback address or `localhost`.
pub fn loopback_host(h: &str) -> bool {
    h.eq_ignore_ascii_case("localhost")
        || h.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

impl Config {
    /// What `check-config` warns about the files: the configuration holding a secret
    /// inline while every local user can read it, and a file of secrets (token, password,
    /// key) readable by every local user.
    pub fn file_warnings(&self, path: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        let inline = self.status.token.is_some()
            || self.provider.iter().any(|p| {
                p.smtp()
                    .is_some_and(|s| s.password.is_some() || s.tls_client_key.is_some())
                    || p.oauth2().is_some_and(|o| o.client_secret.is_some())
            });
        if inline && let Some(why) = readable_by_others(path) {
            out.push(format!(
                "{} holds a secret inline (a password, client_secret, tls_client_key or token) and {why}; or move the secret to a *_file",
                path.display()
            ));
        }
        let mut files: Vec<(&str, &std::path::Path)> = Vec::new();
        if let Some(f) = &self.status.token_file {
            files.push(("status.token_file", f));
        }
        if let Some(f) = &self.status.tls_key {
            files.push(("status.tls_key", f));
        }
        if let Some(f) = &self.smtp.tls_key {
            files.push(("smtp.tls_key", f.get_ref()));
        }
        if let Some(f) = self.fleet.as_ref().and_then(|f| f.password_file.as_deref()) {
            files.push(("fleet.password_file", f));
        }
        for p in &self.provider {
            if let Some(f) = p.smtp().and_then(|s| s.password_file.as_ref()) {
                files.push(("password_file", f));
            }
            if let Some(f) = p.smtp().and_then(|s| s.tls_client_key_file.as_ref()) {
                files.push(("tls_client_key_file", f));
            }
            if let Some(o) = p.oauth2() {
                if let Some(f) = &o.client_secret_file {
                    files.push(("client_secret_file", f));
                }
                if let Some(f) = &o.private_key_file {
                    files.push(("private_key_file", f));
                }
            }
        }
        for (key, f) in files {
            if let Some(why) = readable_by_others(f) {
                out.push(format!("{key} {} {why}", f.display()));
            }
        }
        out
    }

    /// What `check-config` and the daemon's start warn about: settings that work but
    /// leave something open.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(f) = &self.fleet
            && let Ok(url) = reqwest::Url::parse(&f.redis_url)
        {
            let local = match url.host_str() {
                Some(h) => loopback_host(h),
                None => url.scheme().contains("unix"),
            };
            if !local && f.password_file.is_none() && url.password().is_none() {
                out.push("fleet.redis_url leaves this host without fleet.password_file: anyone who reaches that Redis can slow this fleet's mail down (see the README's Fleet section: an ACL user limited to the key prefix)".into());
            }
            if !local && url.scheme() != "rediss" {
                out.push("fleet.redis_url leaves this host without TLS (rediss://): the Redis password and the fleet's traffic cross the network in clear".into());
            }
        }
        out
    }
}
