//! What a user can do about a failure, in words: the Microsoft Entra error codes a token
//! request may end with, and the refusals upstream servers give (Microsoft Entra error codes,
//! learn.microsoft.com/entra/identity-platform/reference-error-codes; Exchange Online's SMTP AUTH
//! errors, learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/authenticated-client-smtp-submission).

/// What a user can do about a Microsoft Entra error code.
pub fn aadsts_advice(code: u32) -> Option<&'static str> {
    Some(match code {
        70008 | 700082 | 70000 | 50173 => "the refresh token expired or was revoked: re-authorize the account",
        70043 => "a Conditional Access sign-in frequency policy ended the session: re-authorize the account, or exclude this app from the policy",
        90002 => "the tenant does not exist: set tenant to the directory (tenant) ID or a verified domain of the tenant",
        65001 => "consent is missing: an administrator must grant consent to the app (API permissions, Grant admin consent), then re-authorize",
        7000215 => "wrong client secret: copy the secret's Value, not its Secret ID",
        7000222 => "the client secret expired: create a new one in the app registration",
        50076 | 50079 => "multi-factor authentication is required: re-authorize the account interactively",
        53003 => "blocked by a Conditional Access policy: an administrator must allow this sign-in",
        50194 => "a single-tenant app cannot use /common: set tenant to the directory (tenant) ID",
        700016 => "the client id is not known in this tenant: check client_id and tenant",
        50126 => "invalid user name or password at the identity provider",
        7000218 => "the app registration wants a client secret: set client_secret_file, or turn on Allow public client flows (Authentication) for the device code flow",
        50011 => "the redirect URI is not registered: add the exact redirect URI the account page shows under Authentication, platform Web",
        9002331 => "the app is for personal Microsoft accounts only: set tenant = \"consumers\"",
        50020 => "this user is not in the tenant (a personal Microsoft account?): sign in as a user of the tenant, or use tenant = \"consumers\" for Outlook.com",
        _ => return None,
    })
}

/// What a user can do about an upstream refusal, from its enhanced code and text.
pub fn upstream_advice(text: &str) -> Option<&'static str> {
    let lower = text.to_ascii_lowercase();
    if lower.contains("security defaults") {
        return Some("the tenant's security defaults block basic authentication and app passwords: use auth = \"oauth\"");
    }
    if lower.contains("5.7.139") || lower.contains("smtpclientauthentication is disabled") {
        return Some("SMTP AUTH is disabled for this tenant or mailbox: enable Authenticated SMTP for the mailbox (Set-CASMailbox -SmtpClientAuthenticationDisabled $false)");
    }
    if lower.contains("application-specific password required") {
        return Some("the provider requires an app password or OAuth for this account");
    }
    None
}

/// An upstream answer only an administrator can fix, as (the code that names it, what to do):
/// retrying or signing in again will not help (Exchange Online's SMTP AUTH errors,
/// learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/authenticated-client-smtp-submission;
/// its non-delivery reports, learn.microsoft.com/exchange/mail-flow-best-practices/non-delivery-reports-in-exchange-online/non-delivery-reports-in-exchange-online;
/// Graph's sendMail errors, learn.microsoft.com/graph/api/user-sendmail).
pub fn admin_action(reply: &str) -> Option<(&'static str, &'static str)> {
    const ACTIONS: [(&str, &str); 8] = [
        ("5.7.139", "SMTP AUTH is disabled for the tenant or mailbox, or a policy blocks it: enable Authenticated SMTP (Set-CASMailbox -SmtpClientAuthenticationDisabled $false), or send through Graph (send = \"graph\")"),
        ("5.7.30", "Exchange Online no longer takes Basic authentication: set the account to auth = \"oauth\" and authorize it"),
        ("5.7.60", "the mailbox may not send as this sender: grant it Send As (Add-RecipientPermission) or have the device send as the mailbox"),
        ("ErrorSendAsDenied", "the mailbox may not send as this sender: grant it Send As (Add-RecipientPermission) or have the device send as the mailbox"),
        ("5.7.57", "the upstream wants a login before mail: check the account's auth settings and the listener's upstream"),
        ("5.7.708", "Exchange Online refuses mail from this tenant (a new or low-reputation tenant): see the tenant's outbound restrictions in the Microsoft 365 Defender portal"),
        ("5.7.236", "a tenant or recipient sending limit was reached: lower the account's messages_per_minute, or ask Microsoft about the tenant's limits"),
        ("403 Graph", "Graph refused to send as this mailbox: grant the app Mail.Send with admin consent and check any application access policy"),
    ];
    // A code counts only where it ends: 5.7.30 is not 5.7.3001.
    let names = |code: &str| {
        reply.match_indices(code).any(|(at, _)| {
            !reply[at + code.len()..]
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
        })
    };
    ACTIONS
        .iter()
        .find(|(code, _)| names(code))
        .map(|&(code, action)| (code.split(' ').next().unwrap_or(code), action))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_entra_code_has_advice() {
        for (code, words) in [
            (700082, "re-authorize"),
            (70008, "re-authorize"),
            (65001, "consent"),
            (7000215, "Value, not its Secret ID"),
            (50076, "multi-factor"),
            (50079, "multi-factor"),
            (53003, "Conditional Access"),
            (50194, "single-tenant app cannot use /common"),
        ] {
            let advice = aadsts_advice(code).unwrap_or_else(|| panic!("{code}"));
            assert!(advice.contains(words), "{code}: {advice}");
        }
        assert_eq!(aadsts_advice(12345), None);
        assert!(upstream_advice("535 5.7.3 Authentication unsuccessful").is_none());
        assert!(upstream_advice("534-5.7.9 Application-specific password required").is_some());
        assert_eq!(
            admin_action("550 5.7.30 Basic authentication is not supported").map(|a| a.0),
            Some("5.7.30")
        );
        assert_eq!(
            admin_action("403 Graph refused to send as this mailbox (x)").map(|a| a.0),
            Some("403")
        );
        assert_eq!(admin_action("550 5.7.3001 something else"), None);
        assert_eq!(admin_action("451 4.7.0 try later"), None);
    }
}
