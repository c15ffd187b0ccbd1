//! Where a provider's tokens come from: the endpoints and scope of its issuer, from the
//! configuration or the issuer's defaults (SPEC.md "Delegated OAuth2").

use std::time::Duration;

use crate::config::{Cloud, Issuer, OAuthFlow, ProviderConfig, ProviderKind};

/// Google's token endpoint.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// Google's authorization endpoint.
pub const GOOGLE_AUTHORIZE_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
/// Google's token revocation endpoint.
pub const GOOGLE_REVOKE_URL: &str = "https://oauth2.googleapis.com/revoke";
/// Google's scope for SMTP (XOAUTH2).
pub const GOOGLE_MAIL_SCOPE: &str = "https://mail.google.com/";

/// A Microsoft refresh token that goes unused this long ages out (AADSTS700082).
pub const MICROSOFT_INACTIVITY: Duration = Duration::from_secs(90 * 86_400);
/// A Google refresh token that goes unused this long ages out (six months).
pub const GOOGLE_INACTIVITY: Duration = Duration::from_secs(182 * 86_400);

/// The endpoints and scope of one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Whose identity platform.
    pub issuer: Issuer,
    /// The token endpoint.
    pub token_url: String,
    /// The device authorization endpoint (Microsoft).
    pub device_code_url: Option<String>,
    /// The authorization endpoint (browser sign-in).
    pub authorize_url: Option<String>,
    /// The revocation endpoint (Google; Microsoft has none for one refresh token).
    pub revoke_url: Option<String>,
    /// The scope asked for.
    pub scope: String,
    /// The resource the tokens are for (a managed identity asks for it by name).
    pub resource: String,
    /// A refresh token that ends this long after it was issued, used or not
    /// (`refresh_token_lifetime`: a Google app in "Testing" status, 7 days).
    pub lifetime: Option<Duration>,
}

fn microsoft(cloud: Cloud, tenant: &str, endpoint: &str) -> String {
    format!("{}/{tenant}/oauth2/v2.0/{endpoint}", cloud.hosts().login)
}

/// The Microsoft identity platform token endpoint of a tenant (global cloud).
pub fn default_token_url(tenant: &str) -> String {
    microsoft(Cloud::Global, tenant, "token")
}

/// The resource a provider's tokens are for, in `cloud`: Graph, or Exchange Online
/// (SMTP); a managed identity asks for a token for it.
pub fn resource(kind: ProviderKind, cloud: Cloud) -> &'static str {
    match kind {
        ProviderKind::Graph => cloud.hosts().graph,
        _ => cloud.hosts().exchange,
    }
}

/// The scope a provider asks for unless `scope` is set.
pub fn default_scope(kind: ProviderKind, flow: OAuthFlow, issuer: Issuer, cloud: Cloud) -> String {
    let hosts = cloud.hosts();
    match (issuer, kind, flow.is_delegated()) {
        (Issuer::Google, _, _) => GOOGLE_MAIL_SCOPE.into(),
        (Issuer::Microsoft, ProviderKind::Graph, false) => format!("{}/.default", hosts.graph),
        (Issuer::Microsoft, ProviderKind::Graph, true) => {
            format!("{}/Mail.Send offline_access", hosts.graph)
        }
        (Issuer::Microsoft, _, false) => format!("{}/.default", hosts.exchange),
        (Issuer::Microsoft, _, true) => {
            format!("{}/SMTP.Send offline_access", hosts.exchange_delegated)
        }
    }
}

impl Endpoints {
    /// The endpoints of a provider with a `[provider.oauth2]` table (defaults for one
    /// without).
    pub fn of(p: &ProviderConfig) -> Endpoints {
        let o = p.oauth2().cloned().unwrap_or_default();
        let issuer = p.oauth_issuer();
        // Workload identity: the webhook puts the tenant in the pod's environment.
        let from_env = (o.flow == OAuthFlow::WorkloadIdentity)
            .then(|| std::env::var("AZURE_TENANT_ID").ok())
            .flatten()
            .filter(|t| !t.is_empty());
        let tenant = o
            .tenant_id
            .as_deref()
            .or(from_env.as_deref())
            .unwrap_or("common");
        let cloud = p.cloud();
        let (token, device, authorize, revoke) = match issuer {
            Issuer::Microsoft => (
                microsoft(cloud, tenant, "token"),
                Some(microsoft(cloud, tenant, "devicecode")),
                Some(microsoft(cloud, tenant, "authorize")),
                None,
            ),
            Issuer::Google => (
                GOOGLE_TOKEN_URL.to_string(),
                None,
                Some(GOOGLE_AUTHORIZE_URL.to_string()),
                Some(GOOGLE_REVOKE_URL.to_string()),
            ),
        };
        Endpoints {
            issuer,
            token_url: o.token_url.clone().unwrap_or(token),
            device_code_url: o.device_code_url.clone().or(device),
            authorize_url: o.authorize_url.clone().or(authorize),
            revoke_url: o.revoke_url.clone().or(revoke),
            scope: o
                .scope
                .clone()
                .unwrap_or_else(|| default_scope(p.kind(), o.flow, issuer, cloud)),
            lifetime: o.refresh_token_lifetime.map(|d| d.0),
            resource: resource(p.kind(), cloud).to_string(),
        }
    }

    /// When a sign-in's refresh token ends (ms): unused for the issuer's inactivity
    /// limit, or at the end of its fixed lifetime, whichever comes first.
    pub fn ages_out_ms(&self, last_used_ms: u64, renewed_ms: u64) -> u64 {
        let idle = last_used_ms.max(renewed_ms) + crate::time::duration_ms(self.inactivity_limit());
        self.lifetime
            .map_or(idle, |l| idle.min(renewed_ms + crate::time::duration_ms(l)))
    }

    /// How long an unused refresh token of this issuer lives.
    pub fn inactivity_limit(&self) -> Duration {
        match self.issuer {
            Issuer::Microsoft => MICROSOFT_INACTIVITY,
            Issuer::Google => GOOGLE_INACTIVITY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(extra: &str) -> ProviderConfig {
        parsed(&format!("kind = \"smtp\"\nusername = \"u@x.com\"\n{extra}"))
    }

    fn parsed(lines: &str) -> ProviderConfig {
        let text = format!(
            "[distributor]\ndefault_provider = \"p\"\n[[provider]]\nname = \"p\"\n{lines}\n"
        );
        crate::config::Config::parse(&text, std::path::Path::new("t.toml"))
            .unwrap()
            .provider
            .remove(0)
    }

    #[test]
    fn defaults_per_issuer() {
        let outlook = provider(
            "host = \"smtp-mail.outlook.com\"\n[provider.oauth2]\nflow = \"device_code\"\ntenant_id = \"consumers\"\nclient_id = \"c\"",
        );
        assert_eq!(
            Endpoints::of(&outlook),
            Endpoints {
                issuer: Issuer::Microsoft,
                token_url: "https://login.microsoftonline.com/consumers/oauth2/v2.0/token".into(),
                device_code_url: Some(
                    "https://login.microsoftonline.com/consumers/oauth2/v2.0/devicecode".into()
                ),
                authorize_url: Some(
                    "https://login.microsoftonline.com/consumers/oauth2/v2.0/authorize".into()
                ),
                revoke_url: None,
                scope: "https://outlook.office.com/SMTP.Send offline_access".into(),
                lifetime: None,
                resource: "https://outlook.office365.com".into(),
            }
        );
        let gmail = provider(
            "host = \"smtp.gmail.com\"\n[provider.oauth2]\nflow = \"authorization_code\"\nclient_id = \"c\"\nclient_secret = \"s\"",
        );
        let e = Endpoints::of(&gmail);
        assert_eq!(e.issuer, Issuer::Google);
        assert_eq!(e.token_url, "https://oauth2.googleapis.com/token");
        assert_eq!(
            e.authorize_url.as_deref(),
            Some("https://accounts.google.com/o/oauth2/v2/auth")
        );
        assert_eq!(e.scope, "https://mail.google.com/");
        assert_eq!(
            e.revoke_url.as_deref(),
            Some("https://oauth2.googleapis.com/revoke")
        );
        let app = provider(
            "host = \"smtp.office365.com\"\n[provider.oauth2]\ntenant_id = \"contoso\"\nclient_id = \"c\"\nclient_secret = \"s\"",
        );
        assert_eq!(
            Endpoints::of(&app).scope,
            "https://outlook.office365.com/.default"
        );
        assert_eq!(
            default_token_url("contoso.onmicrosoft.com"),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
    }

    /// Each cloud's documented hosts and scopes, for smtp (app-only and delegated) and
    /// graph; the README's table says the same.
    #[test]
    fn each_cloud_has_its_documented_hosts_and_scopes() {
        const TABLE: [(&str, &str, &str, &str, &str); 4] = [
            (
                "global",
                "https://login.microsoftonline.com",
                "https://graph.microsoft.com",
                "smtp.office365.com",
                "https://outlook.office365.com",
            ),
            (
                "usgov",
                "https://login.microsoftonline.us",
                "https://graph.microsoft.us",
                "smtp.office365.us",
                "https://outlook.office365.us",
            ),
            (
                "usgov-dod",
                "https://login.microsoftonline.us",
                "https://dod-graph.microsoft.us",
                "smtp.office365.us",
                "https://outlook-dod.office365.us",
            ),
            (
                "china",
                "https://login.chinacloudapi.cn",
                "https://microsoftgraph.chinacloudapi.cn",
                "smtp.partner.outlook.cn",
                "https://partner.outlook.cn",
            ),
        ];
        let readme = include_str!("../../../README.md");
        let oauth =
            "[provider.oauth2]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"";
        for (cloud, login, graph, smtp, exchange) in TABLE {
            let p = provider(&format!("cloud = \"{cloud}\"\n{oauth}"));
            assert!(
                p.kind_problems().is_empty(),
                "{cloud}: {:?}",
                p.kind_problems()
            );
            assert_eq!(p.upstream(), format!("{smtp}:587"), "{cloud}");
            let e = Endpoints::of(&p);
            assert_eq!(
                e.token_url,
                format!("{login}/t/oauth2/v2.0/token"),
                "{cloud}"
            );
            assert_eq!(e.scope, format!("{exchange}/.default"), "{cloud}");
            assert_eq!(resource(p.kind(), p.cloud()), exchange);
            let g = parsed(&format!("kind = \"graph\"\ncloud = \"{cloud}\"\n{oauth}"));
            assert_eq!(g.upstream(), graph, "{cloud}");
            assert_eq!(
                Endpoints::of(&g).scope,
                format!("{graph}/.default"),
                "{cloud}"
            );
            assert_eq!(resource(g.kind(), g.cloud()), graph);
            let row = format!("| `{cloud}` | {login} | {graph} | {smtp} | {exchange}/.default |");
            assert!(readme.contains(&row), "README lacks the row {row}");
        }
        // Delegated scopes and the device code endpoint follow the cloud too; an explicit
        // host, token_url or scope still wins.
        let d = provider(
            "cloud = \"china\"\n[provider.oauth2]\nflow = \"device_code\"\ntenant_id = \"t\"\nclient_id = \"c\"",
        );
        let e = Endpoints::of(&d);
        assert_eq!(
            e.scope,
            "https://partner.outlook.cn/SMTP.Send offline_access"
        );
        assert_eq!(
            e.device_code_url.as_deref(),
            Some("https://login.chinacloudapi.cn/t/oauth2/v2.0/devicecode")
        );
        let o = provider(&format!(
            "cloud = \"usgov\"\nhost = \"relay.example\"\n{oauth}\ntoken_url = \"http://127.0.0.1:9/t\"\nscope = \"s\""
        ));
        assert_eq!(o.upstream(), "relay.example:587");
        let e = Endpoints::of(&o);
        assert_eq!(
            (e.token_url.as_str(), e.scope.as_str()),
            ("http://127.0.0.1:9/t", "s")
        );
        assert_eq!(
            o.limits(),
            (0, 0),
            "not a Microsoft host: no mailbox limits"
        );
        assert_eq!(
            provider(&format!("cloud = \"usgov\"\n{oauth}")).limits(),
            (30, 10_000)
        );
    }
}
