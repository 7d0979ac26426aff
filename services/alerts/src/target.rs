//! Where a webhook may point: the URL rules and the guard against server-side
//! request forgery (SSRF).
//!
//! A webhook URL is `http` or `https`, absolute, with a host, without
//! credentials (`user:password@`) or a fragment, at most
//! [`MAX_URL_BYTES`](tally_store::webhooks::MAX_URL_BYTES) bytes
//! ([`validate_url`]). Unless private targets are allowed
//! (`TALLY_WEBHOOK_ALLOW_PRIVATE`), every address its host resolves to must
//! be a public unicast address ([`forbidden_reason`] names what is not):
//! loopback, RFC 1918 and unique-local (`fc00::/7`) private ranges,
//! link-local (which holds the cloud metadata address 169.254.169.254),
//! carrier-grade NAT `100.64.0.0/10`, unspecified, broadcast, multicast,
//! documentation-free "this network" `0.0.0.0/8`, benchmarking
//! `198.18.0.0/15`, reserved `240.0.0.0/4`, IPv4-mapped and NAT64 forms of
//! any of these, and the IETF protocol block `192.0.0.0/24`.
//!
//! # Invariants
//!
//! * The check runs at registration ([`check_target`]) **and at every
//!   delivery** against the very addresses the connection uses (see
//!   [`GuardedResolver`]), so a host that resolves to a public address at
//!   registration and to a private one later (DNS rebinding) is refused at
//!   delivery and the refusal is recorded in the delivery log.
//! * One forbidden address among several refuses the host: a resolver that
//!   answers a public and a private address cannot steer the connection to
//!   the private one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use url::{Host, Url};

use crate::AlertsError;

/// Why an address may not be a webhook target, or `None` when it may.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        // 169.254.0.0/16, where cloud metadata services answer.
        Some("link_local")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared_address_space")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("reserved")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("protocol_assignments")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("unique_local")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link_local")
    } else if (s[0] & 0xffc0) == 0xfec0 {
        Some("site_local")
    } else if s[0] == 0x64 && s[1] == 0xff9b {
        // NAT64 (64:ff9b::/96 and 64:ff9b:1::/48) reaches IPv4 addresses.
        forbidden_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ))
        .or(Some("nat64"))
    } else if s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0 {
        // IPv4-compatible (deprecated) ::a.b.c.d.
        Some("ipv4_compatible")
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Some("documentation")
    } else {
        None
    }
}

/// Checks a webhook URL's form (not its addresses); the parsed URL.
pub fn validate_url(raw: &str) -> Result<Url, AlertsError> {
    if raw.len() > tally_store::webhooks::MAX_URL_BYTES {
        return Err(AlertsError::UrlTooLong {
            max: tally_store::webhooks::MAX_URL_BYTES,
        });
    }
    let url = Url::parse(raw).map_err(|e| AlertsError::UrlInvalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(AlertsError::UrlScheme(url.scheme().to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(AlertsError::UrlCredentials);
    }
    if url.fragment().is_some() {
        return Err(AlertsError::UrlInvalid(
            "a webhook URL has no #fragment".into(),
        ));
    }
    match url.host() {
        None => return Err(AlertsError::UrlInvalid("the URL has no host".into())),
        Some(Host::Domain("")) => {
            return Err(AlertsError::UrlInvalid("the URL has no host".into()))
        }
        _ => {}
    }
    Ok(url)
}

/// The IP address of a URL whose host is an IP literal.
pub fn literal_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        Host::Domain(_) => None,
    }
}

/// Refuses `addrs` if any is forbidden.
pub fn check_addresses(host: &str, addrs: &[IpAddr]) -> Result<(), AlertsError> {
    if addrs.is_empty() {
        return Err(AlertsError::Unresolvable {
            host: host.to_owned(),
            reason: "no address".into(),
        });
    }
    for ip in addrs {
        if let Some(reason) = forbidden_reason(*ip) {
            return Err(AlertsError::TargetForbidden {
                host: host.to_owned(),
                ip: *ip,
                reason,
            });
        }
    }
    Ok(())
}

/// Resolves `host` (port 0 for the lookup).
async fn resolve(host: &str) -> Result<Vec<IpAddr>, AlertsError> {
    let addrs = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::lookup_host((host, 0)),
    )
    .await
    .map_err(|_| AlertsError::Unresolvable {
        host: host.to_owned(),
        reason: "DNS lookup timed out".into(),
    })?
    .map_err(|e| AlertsError::Unresolvable {
        host: host.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(addrs.map(|a| a.ip()).collect())
}

/// The registration check: the URL's form, then (unless `allow_private`)
/// every address its host resolves to.
pub async fn check_target(raw: &str, allow_private: bool) -> Result<Url, AlertsError> {
    let url = validate_url(raw)?;
    if allow_private {
        return Ok(url);
    }
    let host = url.host_str().unwrap_or_default().to_owned();
    let addrs = match literal_ip(&url) {
        Some(ip) => vec![ip],
        None => resolve(&host).await?,
    };
    check_addresses(&host, &addrs)?;
    Ok(url)
}

/// The HTTP client's resolver at delivery time: resolves like the system
/// does and refuses the host when any address is forbidden, so the
/// connection can only go to checked addresses. (IP literals are not
/// resolved: the delivery checks them itself before connecting.)
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolve(&host).await.map_err(Box::new)?;
            check_addresses(&host, &addrs).map_err(Box::new)?;
            let out: Vec<SocketAddr> = addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(Box::new(out.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The resolver as reqwest takes it.
pub fn guarded_resolver() -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_and_special_addresses_are_forbidden() {
        for (a, why) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link_local"),
            ("100.64.0.1", "shared_address_space"),
            ("100.127.255.255", "shared_address_space"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("240.0.0.1", "reserved"),
            ("198.18.0.1", "benchmarking"),
            ("192.0.0.8", "protocol_assignments"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "unique_local"),
            ("fd12:3456::1", "unique_local"),
            ("fe80::1", "link_local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link_local"),
            ("64:ff9b::a9fe:a9fe", "link_local"),
            ("::7f00:1", "ipv4_compatible"),
        ] {
            assert_eq!(forbidden_reason(ip(a)), Some(why), "{a}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for a in [
            "93.184.216.34",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(forbidden_reason(ip(a)), None, "{a}");
        }
    }

    #[test]
    fn urls_are_checked_for_form() {
        assert!(validate_url("https://hooks.example.com/tally?x=1").is_ok());
        assert!(validate_url("http://93.184.216.34:8080/h").is_ok());
        let code = |u: &str| validate_url(u).unwrap_err().code();
        assert_eq!(code("ftp://example.com/"), "webhook_url_scheme");
        assert_eq!(code("file:///etc/passwd"), "webhook_url_scheme");
        assert_eq!(
            code("https://user:pw@example.com/"),
            "webhook_url_credentials"
        );
        assert_eq!(code("https://user@example.com/"), "webhook_url_credentials");
        assert_eq!(code("not a url"), "webhook_url_invalid");
        assert_eq!(code("https://example.com/#frag"), "webhook_url_invalid");
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert_eq!(code(&long), "webhook_url_too_long");
    }

    #[tokio::test]
    async fn registration_refuses_private_literals_unless_allowed() {
        let e = check_target("http://127.0.0.1:9/h", false)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "webhook_target_forbidden");
        let e = check_target("http://[::1]:9/h", false).await.unwrap_err();
        assert_eq!(e.code(), "webhook_target_forbidden");
        let e = check_target("http://169.254.169.254/latest/meta-data", false)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "webhook_target_forbidden");
        // `localhost` resolves to loopback.
        let e = check_target("http://localhost:9/h", false)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "webhook_target_forbidden");
        assert!(check_target("http://127.0.0.1:9/h", true).await.is_ok());
        assert!(check_target("https://93.184.216.34/h", false).await.is_ok());
    }
}
