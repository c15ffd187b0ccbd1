//! Microsoft's clouds (`cloud = "..."` on an smtp or graph provider): the sign-in host,
//! the Graph host, the SMTP host and the resources the scopes name, from Microsoft's
//! national-cloud documentation ("Microsoft Graph national cloud deployments", "Microsoft
//! identity platform: national clouds", the Exchange Online endpoints of each). One
//! table, here; the README's cloud table is checked against it.

use serde::Deserialize;

/// Which Microsoft cloud a tenant lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Cloud {
    /// The global service (also GCC, which signs in and sends through it).
    #[default]
    Global,
    /// Microsoft 365 GCC High (Azure Government).
    Usgov,
    /// Microsoft 365 DoD (Azure Government).
    UsgovDod,
    /// Microsoft 365 operated by 21Vianet (Azure China).
    China,
}

/// Where a cloud's services are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloudHosts {
    /// The Microsoft Entra ID (sign-in) root, without a path.
    pub login: &'static str,
    /// The Microsoft Graph root, without a version path.
    pub graph: &'static str,
    /// The SMTP AUTH client submission host (port 587, STARTTLS).
    pub smtp_host: &'static str,
    /// Exchange Online as a resource: the app-only SMTP scope is `{exchange}/.default`,
    /// and a managed identity asks for a token for it.
    pub exchange: &'static str,
    /// The delegated SMTP scope's resource (`{it}/SMTP.Send`).
    pub exchange_delegated: &'static str,
}

impl Cloud {
    /// Every cloud, in the order the README lists them.
    pub const ALL: [Cloud; 4] = [Cloud::Global, Cloud::Usgov, Cloud::UsgovDod, Cloud::China];

    /// Its hosts.
    pub fn hosts(self) -> CloudHosts {
        match self {
            Cloud::Global => CloudHosts {
                login: "https://login.microsoftonline.com",
                graph: "https://graph.microsoft.com",
                smtp_host: "smtp.office365.com",
                exchange: "https://outlook.office365.com",
                exchange_delegated: "https://outlook.office.com",
            },
            Cloud::Usgov => CloudHosts {
                login: "https://login.microsoftonline.us",
                graph: "https://graph.microsoft.us",
                smtp_host: "smtp.office365.us",
                exchange: "https://outlook.office365.us",
                exchange_delegated: "https://outlook.office365.us",
            },
            Cloud::UsgovDod => CloudHosts {
                login: "https://login.microsoftonline.us",
                graph: "https://dod-graph.microsoft.us",
                smtp_host: "smtp.office365.us",
                exchange: "https://outlook-dod.office365.us",
                exchange_delegated: "https://outlook-dod.office365.us",
            },
            Cloud::China => CloudHosts {
                login: "https://login.chinacloudapi.cn",
                graph: "https://microsoftgraph.chinacloudapi.cn",
                smtp_host: "smtp.partner.outlook.cn",
                exchange: "https://partner.outlook.cn",
                exchange_delegated: "https://partner.outlook.cn",
            },
        }
    }
}
