//! The diagnosis catalogue: every failed or deferred attempt is explained by a code, what
//! happened, and the fix, in words an administrator can act on. Upstream replies are
//! recognised by reply code, enhanced status code and text (the Microsoft 365 texts are
//! matched as they are sent); local failures (connection, TLS, secrets) by their kind.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an attempt failed, and what to do about it (kept in the history record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// Stable code, e.g. `auth-failed` (its name in the record).
    pub code: Code,
    /// What happened, in words.
    pub explanation: String,
    /// What the administrator should do.
    pub fix: String,
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A name no longer (or not yet) known reads as `unknown`, so an old record always loads.
impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(Code::parse(&name).unwrap_or(Code::Unknown))
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every code mailgate records. `as_str` is the stable name in history, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Username set, server offers no AUTH.
    AuthNotSupported,
    /// 535, 5.7.8, 5.7.3.
    AuthFailed,
    /// 530 / 5.7.57.
    NotAuthenticated,
    /// 5.7.139 "did not meet the criteria to be authenticated".
    AuthMfaRequired,
    /// 5.7.139 "SmtpClientAuthentication is disabled".
    SmtpAuthDisabled,
    /// 5.7.30 "Basic authentication is not supported".
    BasicAuthRetired,
    /// 5.7.60 / SendAsDeniedException.
    SendAsDenied,
    /// 5.7.1 / 5.1.8 "sender address rejected/refused" at MAIL FROM.
    SenderRefused,
    /// 5.7.64 TenantAttribution, 5.7.51 TenantInboundAttribution: no inbound connector
    /// recognised the client certificate (or the address).
    ConnectorNotMatched,
    /// SubmissionQuotaExceeded, or our own daily limit.
    DailyQuota,
    /// "single label domains not accepted".
    SingleLabelDomain,
    /// 5.1.1, 5.1.10 RecipientNotFound, "user unknown", "no such user".
    RecipientUnknown,
    /// 5.2.2.
    MailboxFull,
    /// 552 / 5.3.4.
    MessageTooLarge,
    /// STARTTLS required but not offered.
    StarttlsUnavailable,
    /// Certificate verification failed.
    TlsCertificate,
    /// Refused, timed out, name not resolved, dropped.
    ConnectionFailed,
    /// 4xx rate or concurrency limits.
    UpstreamThrottled,
    /// A stored password cannot be decrypted here.
    PasswordUndecryptable,
    /// The provider's configuration cannot work (missing secret file, bad CA file...).
    ProviderConfig,
    /// The token endpoint refused the app's credentials.
    OAuthInvalidClient,
    /// The app lacks admin consent or the permission (AADSTS consent codes).
    OAuthConsentRequired,
    /// The token endpoint did not answer.
    OAuthEndpointUnreachable,
    /// A delegated flow with no refresh token yet.
    OAuthNotSignedIn,
    /// Managed identity: no metadata endpoint or no identity; workload identity: the
    /// federated token file is missing, unreadable or expired.
    IdentityUnavailable,
    /// The platform refused the refresh token (`invalid_grant`).
    OAuthReauthorize,
    /// Graph 401.
    GraphUnauthorized,
    /// Graph 403.
    GraphForbidden,
    /// Graph 404.
    GraphMailboxNotFound,
    /// A stored message failed its checksum or could not be read back.
    StoreDamaged,
    /// Anything else.
    Unknown,
}

/// Every code, for lookups.
pub const ALL: [Code; 31] = [
    Code::AuthNotSupported,
    Code::AuthFailed,
    Code::NotAuthenticated,
    Code::AuthMfaRequired,
    Code::SmtpAuthDisabled,
    Code::BasicAuthRetired,
    Code::SendAsDenied,
    Code::SenderRefused,
    Code::ConnectorNotMatched,
    Code::DailyQuota,
    Code::SingleLabelDomain,
    Code::RecipientUnknown,
    Code::MailboxFull,
    Code::MessageTooLarge,
    Code::StarttlsUnavailable,
    Code::TlsCertificate,
    Code::ConnectionFailed,
    Code::UpstreamThrottled,
    Code::PasswordUndecryptable,
    Code::ProviderConfig,
    Code::OAuthInvalidClient,
    Code::OAuthConsentRequired,
    Code::OAuthEndpointUnreachable,
    Code::OAuthNotSignedIn,
    Code::IdentityUnavailable,
    Code::OAuthReauthorize,
    Code::GraphUnauthorized,
    Code::GraphForbidden,
    Code::GraphMailboxNotFound,
    Code::StoreDamaged,
    Code::Unknown,
];

impl Code {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::AuthNotSupported => "auth-not-supported",
            Code::AuthFailed => "auth-failed",
            Code::NotAuthenticated => "not-authenticated",
            Code::AuthMfaRequired => "auth-mfa-required",
            Code::SmtpAuthDisabled => "smtp-auth-disabled",
            Code::BasicAuthRetired => "basic-auth-retired",
            Code::SendAsDenied => "send-as-denied",
            Code::SenderRefused => "sender-refused",
            Code::ConnectorNotMatched => "connector-not-matched",
            Code::DailyQuota => "daily-quota",
            Code::SingleLabelDomain => "single-label-domain",
            Code::RecipientUnknown => "recipient-unknown",
            Code::MailboxFull => "mailbox-full",
            Code::MessageTooLarge => "message-too-large",
            Code::StarttlsUnavailable => "starttls-unavailable",
            Code::TlsCertificate => "tls-certificate",
            Code::ConnectionFailed => "connection-failed",
            Code::UpstreamThrottled => "upstream-throttled",
            Code::PasswordUndecryptable => "password-undecryptable",
            Code::ProviderConfig => "provider-config",
            Code::OAuthInvalidClient => "oauth-invalid-client",
            Code::OAuthConsentRequired => "oauth-consent-required",
            Code::OAuthEndpointUnreachable => "oauth-endpoint-unreachable",
            Code::OAuthNotSignedIn => "oauth-not-signed-in",
            Code::IdentityUnavailable => "identity-unavailable",
            Code::OAuthReauthorize => "oauth-reauthorize",
            Code::GraphUnauthorized => "graph-unauthorized",
            Code::GraphForbidden => "graph-forbidden",
            Code::GraphMailboxNotFound => "graph-mailbox-not-found",
            Code::StoreDamaged => "store-damaged",
            Code::Unknown => "unknown",
        }
    }

    /// The code of a stable name.
    pub fn parse(name: &str) -> Option<Code> {
        ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Whether the failure is about credentials or the auth method: always deferred
    /// (soft bounce), whatever the reply code, so fixing the config releases the mail.
    pub fn is_auth(self) -> bool {
        matches!(
            self,
            Code::AuthNotSupported
                | Code::AuthFailed
                | Code::NotAuthenticated
                | Code::AuthMfaRequired
                | Code::SmtpAuthDisabled
                | Code::BasicAuthRetired
                | Code::PasswordUndecryptable
        )
    }

    /// Whether an administrator's config change (credentials, TLS, provider settings,
    /// permissions) is what releases the mail; `retry --all` and reload make these due.
    pub fn is_config(self) -> bool {
        self.is_auth()
            || matches!(
                self,
                Code::StarttlsUnavailable
                    | Code::TlsCertificate
                    | Code::ProviderConfig
                    | Code::SendAsDenied
                    | Code::ConnectorNotMatched
                    | Code::IdentityUnavailable
                    | Code::OAuthInvalidClient
                    | Code::OAuthConsentRequired
                    | Code::OAuthNotSignedIn
                    | Code::OAuthReauthorize
                    | Code::GraphUnauthorized
                    | Code::GraphForbidden
                    | Code::GraphMailboxNotFound
            )
    }

    /// Whether the provider cannot take mail now, so the next provider of a chain takes
    /// it (SPEC "Routes and fallback"): its connection, TLS or sign-in failed, it holds
    /// mail for a configuration reason, or its daily quota is spent. These failures count
    /// towards its circuit. A refusal of the message or a recipient, or a throttling
    /// reply, is not one.
    pub fn moves_on(self) -> bool {
        self.is_config()
            || matches!(
                self,
                Code::ConnectionFailed | Code::OAuthEndpointUnreachable | Code::DailyQuota
            )
    }

    /// The explanation and the fix.
    pub fn texts(self) -> (&'static str, &'static str) {
        match self {
            Code::AuthNotSupported => (
                "The provider has a user name, so mailgate must authenticate, but the server offered no AUTH mechanism (after STARTTLS).",
                "If your SMTP server doesn't support authentication, please clear the SMTP user name and password. Otherwise check host and port: submission (AUTH) is usually on port 587 with tls = \"starttls\".",
            ),
            Code::AuthFailed => (
                "The server rejected the user name or password.",
                "Check the provider's `username` and its password (`password`, `password_file`, `password_env`, or `mailgate password set --provider NAME`), then run `mailgate verify --provider NAME`. For Microsoft 365 the mailbox needs a licence and Authenticated SMTP (Microsoft 365 admin center > Users > Active users > the user > Mail > Manage email apps).",
            ),
            Code::NotAuthenticated => (
                "The server requires authentication before accepting mail from this client (530 / 5.7.57).",
                "Set `username` and a password (or a `[provider.oauth2]` table) on this provider, with `port = 587` and `tls = \"starttls\"`; then run `mailgate verify --provider NAME`.",
            ),
            Code::AuthMfaRequired => (
                "Microsoft 365 refused the sign-in: the account did not meet the criteria to be authenticated (Conditional Access or multi-factor authentication applies to it).",
                "Exclude the relay account from the policy (Entra admin center > Protection > Conditional Access), or switch the provider to a `[provider.oauth2]` table (an app registration with SMTP.SendAsApp), then reload.",
            ),
            Code::SmtpAuthDisabled => (
                "SMTP client authentication (SMTP AUTH) is disabled for the tenant or the mailbox.",
                "Enable Authenticated SMTP for the mailbox (Microsoft 365 admin center > user > Mail > Manage email apps) or tenant-wide with Set-TransportConfig -SmtpClientAuthenticationDisabled $false; or use kind = \"graph\".",
            ),
            Code::BasicAuthRetired => (
                "Microsoft 365 no longer accepts Basic authentication (user name and password) for SMTP client submission.",
                "Switch the provider to OAuth2: add a [provider.oauth2] table (tenant_id, client_id, a client secret or certificate) for an app registration with SMTP.SendAsApp, then reload; held mail is sent.",
            ),
            Code::SendAsDenied => (
                "The relay account is not allowed to send as this From address.",
                "Grant the relay account Send As on that mailbox (Exchange admin center > Recipients > Mailboxes > the mailbox > Delegation > Send as, or Add-RecipientPermission), or set the user's `sender_email` to an address the account may use; with `send_mode = \"on-behalf-of\"` only Send on Behalf is needed.",
            ),
            Code::SenderRefused => (
                "The upstream refused the envelope sender (MAIL FROM): it takes no mail from this address (5.7.1 or 5.1.8, \"sender address rejected\" or \"refused\"). The address is the one after mailgate's rewrite; the reply says more.",
                "`mailgate show ID` shows the sender that went. Make it an address the provider's account may send from: set the user's `sender_email` (or `rewrite.default_sender`) to it, or grant the account the right to send as it (Microsoft 365: Send As, or own the address); for 5.1.8 the sender's domain must exist in DNS. Then `mailgate retry ID`.",
            ),
            Code::ConnectorNotMatched => (
                "Exchange Online took the connection but no inbound connector of the tenant recognised it, so it refused to relay (5.7.64 TenantAttribution, 5.7.51 TenantInboundAttribution): the client certificate's subject is not the one a connector names, no certificate was presented, or the connector identifies senders by IP address and this one is not in its list.",
                "In the Exchange admin center > Mail flow > Connectors, check the connector \"from your organization's email server\": it must identify the sender by the TLS certificate whose subject is the name in mailgate's `tls_client_cert` (`mailgate verify --provider NAME` prints it), and that name must be one of the tenant's accepted domains. Set `tls_client_cert` and its key on this provider if it has none; the host is the tenant's MX (`contoso-com.mail.protection.outlook.com`, port 25, tls = \"starttls\"). Then reload; held mail is sent.",
            ),
            Code::DailyQuota => (
                "The daily recipient quota is reached (Microsoft 365: 10,000 recipients a day per mailbox, SubmissionQuotaExceeded).",
                "Nothing to do: mail goes out when the rolling 24-hour window allows (`mailgate queue` shows what waits). To send more, route some users to another provider (`provider` in their `[[user]]`), or raise the provider's `per_day_recipient_limit` if the mailbox's plan allows it.",
            ),
            Code::SingleLabelDomain => (
                "The upstream refused a recipient in a single-label domain (like user@contoso).",
                "Fix the recipient address in the sending application: it needs a full domain (user@contoso.com).",
            ),
            Code::RecipientUnknown => (
                "The upstream does not know the recipient address: it is misspelt, or the mailbox was removed or renamed.",
                "Correct the address in the sending application (or its address book); the upstream's reply names the address. This is permanent: `mailgate retry ID` only helps after the mailbox exists again.",
            ),
            Code::MailboxFull => (
                "The recipient's mailbox is full.",
                "The recipient must free space; send again later with `mailgate retry ID`.",
            ),
            Code::MessageTooLarge => (
                "The message is larger than the upstream accepts.",
                "Send smaller attachments, or raise the upstream's limit (Exchange admin center > Mail flow > Message size restrictions; up to 150 MB). Keep `smtp.max_message_size` at or below the upstream's limit so clients are refused at once with 552 instead. A graph provider takes at most 4 MB per request: route users who send large attachments to an smtp provider.",
            ),
            Code::StarttlsUnavailable => (
                "tls = \"starttls\" is set, but the server did not offer STARTTLS; mailgate never falls back to plain text.",
                "Check the provider's `host` and `port` (Microsoft 365: `smtp.office365.com`, `port = 587`). For implicit TLS on port 465 set `tls = \"tls\"`; only for a trusted server on this machine set `tls = \"none\"`. Then run `mailgate verify --provider NAME`.",
            ),
            Code::TlsCertificate => (
                "The server's TLS certificate could not be verified; the reply names the cause (self-signed, unknown issuer, expired, not valid yet, name mismatch or fingerprint mismatch) and the certificate's subject, issuer and SHA-256 fingerprint.",
                "Follow the fix in the reply: a self-signed server certificate or a private CA goes in the provider's `ca_file` (PEM), or pin the certificate with the `tls_fingerprint = \"sha256:...\"` line the reply prints; a name mismatch needs `host` set to a name the certificate lists; an expired certificate must be renewed on the server. Then run `mailgate verify --provider NAME`. Verification is never switched off.",
            ),
            Code::ConnectionFailed => (
                "The upstream server could not be reached: connection refused, timed out, name not resolved, or dropped.",
                "Check the provider's `host` and `port`, DNS, and that a firewall allows outbound connections to that port; `mailgate verify --provider NAME` tries it now. Mail is retried and sent once the server is reachable.",
            ),
            Code::UpstreamThrottled => (
                "The upstream is limiting the rate or number of concurrent connections.",
                "Nothing to do: mail is retried. To avoid it, lower the provider's `per_minute_limit` or `max_connections` and reload.",
            ),
            Code::PasswordUndecryptable => (
                "The stored password of this provider cannot be decrypted with this installation's key (the store or secrets file came from another installation, or the key file changed).",
                "Run mailgate password set --provider NAME again on this installation.",
            ),
            Code::ProviderConfig => (
                "The provider's configuration cannot be used as it is.",
                "Correct the setting the reply names in the provider's `[[provider]]` section, check it with `mailgate check-config`, then reload (`systemctl reload mailgate` or SIGHUP); held mail is sent.",
            ),
            Code::OAuthInvalidClient => (
                "The Microsoft identity platform refused the app's credentials (invalid_client / unauthorized_client: wrong client_id or tenant_id, an expired or wrong client secret, or a certificate it does not know).",
                "In Entra ID > App registrations, check the Application (client) ID and Directory (tenant) ID, and create a new client secret (or upload the certificate) under Certificates & secrets; update [provider.oauth2] and reload.",
            ),
            Code::OAuthConsentRequired => (
                "The app registration has no admin consent for the permission it needs, or the resource is not set up in the tenant (AADSTS65001, AADSTS500011 and similar).",
                "In Entra ID > App registrations > API permissions, add the application permission (Office 365 Exchange Online SMTP.SendAsApp for SMTP, Microsoft Graph Mail.Send for Graph) and press \"Grant admin consent\"; then reload.",
            ),
            Code::OAuthEndpointUnreachable => (
                "The OAuth2 token endpoint could not be reached or answered with a server error.",
                "Check DNS and that outbound HTTPS to login.microsoftonline.com (or the `token_url` of `[provider.oauth2]`) is allowed; `mailgate verify --provider NAME` tries it now. Mail is retried.",
            ),
            Code::OAuthNotSignedIn => (
                "The provider uses a delegated OAuth2 flow (flow = \"device_code\" or \"authorization_code\") and no mailbox has signed in yet, so mailgate has no refresh token to get access tokens with. The mail is held.",
                "Run `mailgate oauth2 login --provider NAME` (with the daemon's configuration, as the user mailgate runs as) and sign in as the mailbox; held mail is sent as soon as the sign-in succeeds. `mailgate oauth2 status` shows the sign-in of every provider.",
            ),
            Code::IdentityUnavailable => (
                "The provider signs in without a secret and the identity to do it with is not there: for flow = \"managed-identity\" the metadata endpoint (169.254.169.254, or App Service's IDENTITY_ENDPOINT) did not answer or says no identity is assigned; for flow = \"workload-identity\" the federated token file is missing, unreadable, empty or expired. The reply says which step failed. The mail is held.",
                "Managed identity: run mailgate on the Azure VM or App Service, assign it an identity (system-assigned, or user-assigned with its `client_id` in [provider.oauth2]) and give it the permission (SMTP.SendAsApp or Mail.Send). Workload identity: the pod needs the label azure.workload.identity/use: \"true\" and a service account with the client-id annotation, so the token file exists; check `federated_token_file` (default $AZURE_FEDERATED_TOKEN_FILE). Then reload; held mail is sent.",
            ),
            Code::OAuthReauthorize => (
                "The identity platform refused the stored refresh token (invalid_grant): it went unused too long (AADSTS700082, 90 days), a sign-in frequency policy asks for a new sign-in (AADSTS70043), the password was changed or the sessions revoked (AADSTS50173), or Google revoked or expired it. The reply keeps the platform's code and words, with what they mean. The mail is held.",
                "Sign in again: `mailgate oauth2 login --provider NAME`; held mail is sent when it succeeds. If it comes back: for AADSTS70043 lengthen or lift the Conditional Access sign-in frequency for this mailbox; for Gmail publish the OAuth consent screen (apps in Testing status get refresh tokens that expire after 7 days); for AADSTS700082 keep mailgate running (it renews the sign-in every 12 hours).",
            ),
            Code::GraphUnauthorized => (
                "Microsoft Graph refused the access token (401), even after a fresh one was fetched.",
                "Check that the app registration has the Mail.Send application permission with admin consent and that tenant_id names the tenant of the mailbox; then reload.",
            ),
            Code::GraphForbidden => (
                "Microsoft Graph refused to send as this mailbox (403): the app may not send for it (an application access policy may restrict it), or the mailbox is invalid or has no licence.",
                "Allow the app for this mailbox (New-ApplicationAccessPolicy, or remove the restriction) and check that the sender is a licensed mailbox; or map the application to a user with a valid sender_email.",
            ),
            Code::GraphMailboxNotFound => (
                "Microsoft Graph found no mailbox for the sender address (404).",
                "The envelope sender after the rewrite must be an existing mailbox in the tenant: set the user's sender_email (or rewrite.default_sender) to one.",
            ),
            Code::StoreDamaged => (
                "The stored copy of the message fails its checksum or cannot be read back from the store file (a damaged disk page or a file changed outside mailgate); it was not sent, so no damaged mail went out.",
                "Stop mailgate and run `mailgate store check` to see what else is affected; `mailgate store salvage NEW.redb` copies every readable message into a new store (then point store.path at it). Ask the sender to send this message again, and check the disk (`dmesg`, SMART).",
            ),
            Code::Unknown => (
                "The upstream answered with a failure that mailgate does not recognise; its reply is kept in the attempt.",
                "Read the upstream reply in the attempt (`mailgate show ID`) and look up its enhanced status code (like 5.7.1) in the upstream's documentation; when the cause is fixed, `mailgate retry ID` sends it again.",
            ),
        }
    }

    /// The diagnosis record of this code.
    pub fn diagnosis(self) -> Diagnosis {
        let (explanation, fix) = self.texts();
        Diagnosis {
            code: self,
            explanation: explanation.into(),
            fix: fix.into(),
        }
    }
}

/// Parses an enhanced status code (`5.7.139`) at the start of a reply text.
pub fn enhanced_code(text: &str) -> Option<(u8, u16, u16)> {
    let first = text.split_whitespace().next()?;
    let mut parts = first.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(2..=5).contains(&class) {
        return None;
    }
    Some((class, subject, detail))
}

/// Recognises an upstream reply (code and text after the code).
pub fn from_reply(code: u16, text: &str) -> Code {
    let esc = enhanced_code(text);
    let is = |s: u16, d: u16| esc.is_some_and(|(_, a, b)| a == s && b == d);
    let lower = text.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(&needle.to_ascii_lowercase());
    if is(7, 30) || has("Basic authentication is not supported") {
        Code::BasicAuthRetired
    } else if has("SmtpClientAuthentication is disabled") {
        Code::SmtpAuthDisabled
    } else if has("did not meet the criteria to be authenticated") {
        Code::AuthMfaRequired
    } else if is(7, 60)
        || has("SendAsDenied")
        || has("does not have permissions to send as this sender")
    {
        Code::SendAsDenied
    } else if is(7, 64) || is(7, 51) || has("TenantAttribution") || has("TenantInboundAttribution")
    {
        Code::ConnectorNotMatched
    } else if (is(1, 8) || is(7, 1) || code == 553 || code == 550)
        && has("sender")
        && (has("refused") || has("rejected") || has("denied"))
        || is(1, 8)
    {
        Code::SenderRefused
    } else if has("SubmissionQuotaExceeded") {
        Code::DailyQuota
    } else if has("single label domain") {
        Code::SingleLabelDomain
    } else if code == 530 || is(7, 57) {
        Code::NotAuthenticated
    } else if code == 535 || is(7, 8) || is(7, 3) || is(7, 139) {
        Code::AuthFailed
    } else if is(1, 1)
        || is(1, 10)
        || has("RecipientNotFound")
        || has("user unknown")
        || has("no such user")
        || has("unknown user")
    {
        Code::RecipientUnknown
    } else if is(2, 2) {
        Code::MailboxFull
    } else if code == 552 || is(3, 4) {
        Code::MessageTooLarge
    } else if (400..500).contains(&code)
        && (is(4, 5)
            || is(3, 2)
            || is(7, 0) && (has("too many") || has("limit"))
            || [
                "rate",
                "throttl",
                "too many",
                "concurren",
                "busy",
                "try again later",
                "limit",
            ]
            .iter()
            .any(|w| has(w)))
    {
        Code::UpstreamThrottled
    } else {
        Code::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replies seen from Microsoft 365, Postfix and others, with the code each means.
    const REPLIES: &[(u16, &str, Code)] = &[
        (
            535,
            "5.7.139 Authentication unsuccessful, the user credentials were incorrect.",
            Code::AuthFailed,
        ),
        (
            535,
            "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
            Code::SmtpAuthDisabled,
        ),
        (
            535,
            "5.7.139 Authentication unsuccessful, the request did not meet the criteria to be authenticated successfully.",
            Code::AuthMfaRequired,
        ),
        (535, "5.7.3 Authentication unsuccessful", Code::AuthFailed),
        (535, "5.7.8 Error: authentication failed", Code::AuthFailed),
        (
            550,
            "5.7.30 Basic authentication is not supported for Client Submission.",
            Code::BasicAuthRetired,
        ),
        (
            530,
            "5.7.57 Client not authenticated to send mail.",
            Code::NotAuthenticated,
        ),
        (
            554,
            "5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied",
            Code::SendAsDenied,
        ),
        (
            550,
            "5.7.60 SMTP; Client does not have permissions to send as this sender",
            Code::SendAsDenied,
        ),
        (
            554,
            "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
            Code::DailyQuota,
        ),
        (
            550,
            "5.1.2 single label domains not accepted",
            Code::SingleLabelDomain,
        ),
        (552, "5.2.2 Mailbox full", Code::MailboxFull),
        (
            552,
            "5.3.4 Message size exceeds fixed maximum message size",
            Code::MessageTooLarge,
        ),
        (
            421,
            "4.7.0 Too many connections from this host",
            Code::UpstreamThrottled,
        ),
        (
            451,
            "4.7.500 Server busy. Please try again later",
            Code::UpstreamThrottled,
        ),
        (452, "4.5.3 Too many recipients", Code::UpstreamThrottled),
        (550, "5.1.1 User unknown", Code::RecipientUnknown),
        (
            550,
            "5.1.1 <nobody@example.com>: Recipient address rejected: User unknown in local recipient table",
            Code::RecipientUnknown,
        ),
        (
            550,
            "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
            Code::RecipientUnknown,
        ),
        (550, "No such user here", Code::RecipientUnknown),
        (550, "5.7.1 Relaying denied", Code::Unknown),
        (
            550,
            "5.7.64 TenantAttribution; Relay Access Denied [DM6NAM11FT034.eop-nam11.prod.protection.outlook.com]",
            Code::ConnectorNotMatched,
        ),
        (
            550,
            "5.7.51 TenantInboundAttribution; There is a partner connector configured that matched the message's recipient domain. The partner connector has a Reject attribute",
            Code::ConnectorNotMatched,
        ),
        (550, "5.7.1 Sender address refused", Code::SenderRefused),
        (
            553,
            "5.7.1 <app@erp.local>: Sender address rejected: not owned by user relay@contoso.com",
            Code::SenderRefused,
        ),
        (
            550,
            "5.1.8 <app@nowhere.invalid>: Sender address rejected: Domain not found",
            Code::SenderRefused,
        ),
        (
            554,
            "5.7.1 <b@example.com>: Recipient address rejected: Access denied",
            Code::Unknown,
        ),
    ];

    #[test]
    fn microsoft_365_replies() {
        for &(code, text, want) in REPLIES {
            assert_eq!(from_reply(code, text), want, "{code} {text}");
        }
    }

    #[test]
    fn readme_troubleshooting_lists_every_code() {
        let readme = include_str!("../README.md");
        let table = &readme[readme.find("### Diagnosis codes").expect("section")..];
        for c in ALL {
            assert!(
                table.contains(&format!("| `{}` |", c.as_str())),
                "{c:?} missing from README"
            );
        }
    }

    #[test]
    fn every_code_explains_itself() {
        for c in ALL {
            assert_eq!(Code::parse(c.as_str()), Some(c));
            let (why, fix) = c.texts();
            assert!(why.len() > 20 && fix.len() > 20, "{c:?}");
        }
        let d = Code::AuthNotSupported.diagnosis();
        assert!(d.fix.starts_with("If your SMTP server doesn't support authentication, please clear the SMTP user name and password"));
        assert_eq!(
            Code::PasswordUndecryptable.diagnosis().fix,
            "Run mailgate password set --provider NAME again on this installation."
        );
        assert_eq!(enhanced_code("5.7.139 x"), Some((5, 7, 139)));
        assert_eq!(enhanced_code("OK"), None);
    }
}
