//! What an identity platform's refusal means: the token endpoint's error answer becomes
//! a diagnosis code and a reply that keeps the platform's code and first line, with what
//! it means for the codes administrators meet (AADSTS700082, 70043, 50173, 700025, ...).

use serde::Deserialize;

use crate::diagnosis::Code;

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    /// Diagnosis code.
    pub code: Code,
    /// The endpoint's answer or the local error (never a secret or a token).
    pub reply: String,
}

#[derive(Deserialize, Default)]
pub(super) struct ErrorResponse {
    #[serde(default)]
    pub(super) error: String,
    #[serde(default)]
    pub(super) error_description: String,
    #[serde(default)]
    pub(super) error_codes: Vec<u64>,
}

impl ErrorResponse {
    fn aadsts(&self, n: u64) -> bool {
        self.error_codes.contains(&n) || self.error_description.contains(&format!("AADSTS{n}"))
    }
}

/// What an identity platform's refusal means, in words, for the codes administrators
/// meet (kept beside the platform's own words in the reply).
fn explain(e: &ErrorResponse) -> Option<&'static str> {
    const KNOWN: [(u64, &str); 12] = [
        (
            70021,
            "no federated credential of the app matches the pod's token: in Entra admin center > App registrations (or the managed identity) > Certificates & secrets > Federated credentials, the issuer must be the cluster's OIDC issuer URL and the subject system:serviceaccount:NAMESPACE:SERVICEACCOUNT",
        ),
        (
            700213,
            "no federated credential matches the token's subject: it must be system:serviceaccount:NAMESPACE:SERVICEACCOUNT of the pod mailgate runs in",
        ),
        (
            700024,
            "the federated token is not within its valid time range: the file was not renewed (kubelet rotates the projected token; check that the volume is mounted and mailgate reads the file it names)",
        ),
        (
            7000218,
            "the app registration is not a public client: in Entra admin center > App registrations > the app > Authentication, set Allow public client flows to Yes",
        ),
        (
            700082,
            "the refresh token expired after 90 days without use: mailgate renews it every 12 hours while it runs, so mailgate was stopped that long or the sign-in was never used",
        ),
        (
            70043,
            "a Conditional Access sign-in frequency policy requires a new sign-in: exclude the mailbox from it or lengthen its sign-in frequency to sign in less often",
        ),
        (
            70044,
            "the session expired under a sign-in frequency policy: sign in again",
        ),
        (
            50173,
            "the grant was revoked: the account's password was changed or its sessions were revoked since the sign-in",
        ),
        (
            700025,
            "a public client must not send a secret: remove client_secret, client_secret_file and client_secret_env from [provider.oauth2] (or turn the app registration into a confidential client)",
        ),
        (
            50076,
            "multi-factor authentication is now required: the next sign-in does it",
        ),
        (
            50079,
            "the account must register for multi-factor authentication: the next sign-in does it",
        ),
        (
            65001,
            "the consent given at sign-in was withdrawn: the next sign-in asks for it",
        ),
    ];
    if let Some((_, words)) = KNOWN.iter().find(|(n, _)| e.aadsts(*n)) {
        return Some(words);
    }
    if e.error == "invalid_grant"
        && e.error_codes.is_empty()
        && !e.error_description.contains("AADSTS")
    {
        return Some(
            "Google refused the refresh token: it was revoked (Google Account > Security > Third-party connections), the password was changed, it went unused for six months, or the OAuth client is in Testing status, whose refresh tokens expire after 7 days (publish the app to get lasting ones)",
        );
    }
    None
}

/// The diagnosis of a token endpoint error; `delegated` for a grant that uses a refresh
/// token (an `invalid_grant` then means the mailbox must sign in again).
pub fn classify_token_error(status: u16, body: &str, delegated: bool) -> TokenError {
    let e: ErrorResponse = serde_json::from_str(body).unwrap_or_default();
    let reauthorize = matches!(
        e.error.as_str(),
        "invalid_grant" | "interaction_required" | "consent_required" | "login_required"
    );
    let consent = [65001u64, 650057, 650052, 500011, 7000112, 50020]
        .iter()
        .any(|n| e.aadsts(*n))
        || e.error_description.to_ascii_lowercase().contains("consent");
    let federated = [70021u64, 700211, 700213, 700024]
        .iter()
        .any(|n| e.aadsts(*n));
    let code = if federated {
        Code::IdentityUnavailable
    } else if delegated && reauthorize {
        Code::OAuthReauthorize
    } else if consent {
        Code::OAuthConsentRequired
    } else if matches!(e.error.as_str(), "invalid_client" | "unauthorized_client")
        || [7000215u64, 7000222, 700016, 700027, 90002, 700025]
            .iter()
            .any(|n| e.aadsts(*n))
    {
        Code::OAuthInvalidClient
    } else if status >= 500 {
        Code::OAuthEndpointUnreachable
    } else {
        Code::OAuthInvalidClient
    };
    let reply = if e.error.is_empty() {
        format!("token endpoint answered {}", words_of(&e, status, body))
    } else {
        format!(
            "token endpoint answered HTTP {status}: {}",
            words_of(&e, status, body)
        )
    };
    TokenError { code, reply }
}

/// The platform's words for an error answer: `error: first line of error_description`,
/// with what it means where that is known; an answer that is no OAuth2 error is quoted.
pub(super) fn platform_words(status: u16, body: &str) -> String {
    words_of(
        &serde_json::from_str(body).unwrap_or_default(),
        status,
        body,
    )
}

fn words_of(e: &ErrorResponse, status: u16, body: &str) -> String {
    if e.error.is_empty() {
        return format!(
            "HTTP {status}: {}",
            body.chars().take(300).collect::<String>()
        );
    }
    let first = e.error_description.lines().next().unwrap_or("");
    let mut words = if first.is_empty() {
        e.error.clone()
    } else {
        format!("{}: {first}", e.error)
    };
    if let Some(meaning) = explain(e) {
        words = format!("{words} ({meaning})");
    }
    words
}

/// The words for a success answer that holds no token.
pub(super) fn not_a_token(e: &serde_json::Error) -> String {
    format!("the token endpoint answered something that is not a token: {e}")
}

pub(super) fn local(code: Code, reply: impl Into<String>) -> TokenError {
    TokenError {
        code,
        reply: reply.into(),
    }
}

pub(super) use crate::provider::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_endpoint_errors_are_diagnosed() {
        let e = classify_token_error(
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#,
            false,
        );
        assert_eq!(e.code, Code::OAuthInvalidClient);
        assert!(e.reply.contains("AADSTS7000215"));
        let e = classify_token_error(
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS65001: The user or administrator has not consented to use the application","error_codes":[65001]}"#,
            false,
        );
        assert_eq!(e.code, Code::OAuthConsentRequired);
        let e = classify_token_error(
            400,
            r#"{"error":"invalid_resource","error_description":"AADSTS500011: The resource principal named https://outlook.office365.com was not found in the tenant","error_codes":[500011]}"#,
            false,
        );
        assert_eq!(e.code, Code::OAuthConsentRequired);
        assert_eq!(
            classify_token_error(503, "busy", false).code,
            Code::OAuthEndpointUnreachable
        );
    }

    #[test]
    fn a_refused_refresh_token_means_sign_in_again_with_the_reason() {
        let e = classify_token_error(
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity.\r\nTrace ID: x","error_codes":[700082]}"#,
            true,
        );
        assert_eq!(e.code, Code::OAuthReauthorize);
        assert!(
            e.reply.contains(
                "invalid_grant: AADSTS700082: The refresh token has expired due to inactivity."
            ),
            "{}",
            e.reply
        );
        assert!(e.reply.contains("90 days without use"), "{}", e.reply);
        assert!(!e.reply.contains("Trace ID"));
        let e = classify_token_error(
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS70043: The refresh token has expired or is invalid due to sign-in frequency checks by conditional access.","error_codes":[70043]}"#,
            true,
        );
        assert_eq!(e.code, Code::OAuthReauthorize);
        assert!(e.reply.contains("sign-in frequency policy"), "{}", e.reply);
        let e = classify_token_error(
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS50173: The provided grant has expired due to it being revoked, a fresh auth token is needed.","error_codes":[50173]}"#,
            true,
        );
        assert!(e.reply.contains("password was changed"), "{}", e.reply);
        let e = classify_token_error(
            400,
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
            true,
        );
        assert_eq!(e.code, Code::OAuthReauthorize);
        assert!(
            e.reply.contains("Google refused the refresh token"),
            "{}",
            e.reply
        );
        let e = classify_token_error(
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS700025: Client is public so neither 'client_assertion' nor 'client_secret' should be presented.","error_codes":[700025]}"#,
            true,
        );
        assert_eq!(e.code, Code::OAuthInvalidClient);
        assert!(
            e.reply.contains("a public client must not send a secret"),
            "{}",
            e.reply
        );
        // The same invalid_grant in the app-only flow is about the app, not a sign-in.
        assert_ne!(
            classify_token_error(
                400,
                r#"{"error":"invalid_grant","error_description":"AADSTS700082: x"}"#,
                false
            )
            .code,
            Code::OAuthReauthorize
        );
    }

    #[test]
    fn the_platforms_words_with_what_they_mean() {
        assert_eq!(
            platform_words(
                400,
                r#"{"error":"access_denied","error_description":"AADSTS70000: The user has denied access.\r\nTrace ID: 1"}"#
            ),
            "access_denied: AADSTS70000: The user has denied access."
        );
        let w = platform_words(
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.","error_codes":[7000218]}"#,
        );
        assert!(w.contains("Allow public client flows to Yes"), "{w}");
        assert_eq!(platform_words(502, "Bad Gateway"), "HTTP 502: Bad Gateway");
    }
}
