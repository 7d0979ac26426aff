//! Routing profiles: the organisation default (`PUT /v1/routing`) and one
//! per agent (`PUT /v1/agents/{agent_id}/routing`), and how a profile and a
//! request combine ([`effective`]).
//!
//! # The rules
//!
//! * **The agent's profile, else the organisation's default, else none.**
//!   Profiles do not merge with each other: an agent's profile replaces the
//!   default as a whole.
//! * **The profile is authoritative for `capacity` and `server_tools`.** A
//!   request may ask for the same or a narrower capacity
//!   (`shared` ⊃ `byok_first` ⊃ `byok_only`); a wider one fails
//!   `capacity_not_granted`. Server tools are off unless the profile grants
//!   them; asking for one it does not grant fails `server_tool_not_granted`.
//!   Without any profile, capacity is the request's and no server tool is
//!   granted.
//! * **A request may narrow the rest, never widen it**: its presets are
//!   added after the profile's; `ignore` lists are united; `only` is
//!   intersected with the profile's; `order` and `sort` are the request's
//!   when given; `allow_fallbacks: false`, `data_collection: deny` and
//!   `zdr: true` from either side win; `max_price` takes the lower ceiling
//!   per field. Widening attempts on these fields are ignored (the
//!   profile's stricter value stays).
//! * **BYOK providers** are the profile's when it lists them, else the
//!   connection's. Fallback `models` are the request's when given, else the
//!   profile's; `max_output_tokens` likewise.

use serde::{Deserialize, Serialize};
use tally_events::{Capacity, DataCollection, MaxPrice, ProviderPrefs, Routing};
use tally_money::Cost;

/// A routing profile as stored and written (`deny_unknown_fields`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingProfile {
    /// Fallback models, tried in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Provider preferences.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "tally_events::strict::object_only_opt"
    )]
    pub provider: Option<ProviderPrefs>,
    /// Whose capacity serves the agent's requests (default `shared`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// Presets applied before the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presets: Option<Vec<String>>,
    /// Server tools the agent may use (none unless listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tools: Option<Vec<String>>,
    /// BYOK providers for this profile (default: the connection's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byok_providers: Option<Vec<String>>,
    /// Output token cap when the request gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
}

impl RoutingProfile {
    /// `high` when the profile grants any server tool (they act on the
    /// outside world and cost per call), else `low`.
    pub fn risk(&self) -> &'static str {
        if self.server_tools.as_ref().is_some_and(|t| !t.is_empty()) {
            "high"
        } else {
            "low"
        }
    }

    /// The routing part, in the request's shape (for the compiler).
    pub fn routing(&self) -> Routing {
        Routing {
            presets: self.presets.clone(),
            provider: self.provider.clone(),
            capacity: self.capacity,
        }
    }

    /// Checks what the compiler does not: server tool names, list sizes.
    pub fn validate_shape(&self) -> Result<(), (&'static str, String)> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b))
        };
        for t in self.server_tools.iter().flatten() {
            if !name_ok(t) {
                return Err((
                    "invalid_server_tool",
                    format!("server tool {t:?} must match ^[A-Za-z0-9_:.-]{{1,64}}$"),
                ));
            }
        }
        for (field, list) in [
            ("models", &self.models),
            ("presets", &self.presets),
            ("server_tools", &self.server_tools),
            ("byok_providers", &self.byok_providers),
        ] {
            if list.as_ref().is_some_and(|l| l.len() > 32) {
                return Err(("invalid_profile", format!("{field}: at most 32 entries")));
            }
        }
        if self.max_output_tokens == Some(0) {
            return Err((
                "invalid_profile",
                "max_output_tokens must be at least 1".to_owned(),
            ));
        }
        Ok(())
    }
}

/// What one request runs with after its profile is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effective {
    /// Routing for the compiler.
    pub routing: Routing,
    /// Fallback models.
    pub models: Option<Vec<String>>,
    /// Server tools to send (all granted).
    pub server_tools: Option<Vec<String>>,
    /// BYOK providers.
    pub byok: Vec<String>,
    /// Output token cap.
    pub max_output_tokens: Option<u32>,
}

/// Why a request is refused by its profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileRefusal {
    /// A server tool the profile does not grant.
    #[error("server tool {0:?} is not granted by the agent's routing profile")]
    ServerToolNotGranted(String),
    /// A capacity wider than the profile's.
    #[error("capacity {asked} is wider than the routing profile's {granted}")]
    CapacityNotGranted {
        /// What the request asked for.
        asked: &'static str,
        /// What the profile allows.
        granted: &'static str,
    },
}

impl ProfileRefusal {
    /// `server_tool_not_granted` or `capacity_not_granted`.
    pub fn code(&self) -> &'static str {
        match self {
            ProfileRefusal::ServerToolNotGranted(_) => "server_tool_not_granted",
            ProfileRefusal::CapacityNotGranted { .. } => "capacity_not_granted",
        }
    }
}

fn width(c: Capacity) -> u8 {
    match c {
        Capacity::ByokOnly => 0,
        Capacity::ByokFirst => 1,
        Capacity::Shared => 2,
    }
}

fn narrow_provider(
    base: Option<&ProviderPrefs>,
    req: Option<&ProviderPrefs>,
) -> Option<ProviderPrefs> {
    let (base, req) = match (base, req) {
        (None, None) => return None,
        (Some(b), None) => return Some(b.clone()),
        (None, Some(r)) => return Some(r.clone()),
        (Some(b), Some(r)) => (b, r),
    };
    let mut p = base.clone();
    if req.order.is_some() {
        p.order.clone_from(&req.order);
    }
    if req.sort.is_some() {
        p.sort = req.sort;
    }
    p.ignore = match (&base.ignore, &req.ignore) {
        (Some(a), Some(b)) => {
            let mut u = a.clone();
            for x in b {
                if !u.contains(x) {
                    u.push(x.clone());
                }
            }
            Some(u)
        }
        (a, b) => a.clone().or_else(|| b.clone()),
    };
    p.only = match (&base.only, &req.only) {
        (Some(a), Some(b)) => Some(b.iter().filter(|x| a.contains(x)).cloned().collect()),
        (a, b) => a.clone().or_else(|| b.clone()),
    };
    if req.allow_fallbacks == Some(false) {
        p.allow_fallbacks = Some(false);
    } else if base.allow_fallbacks.is_none() {
        p.allow_fallbacks = req.allow_fallbacks;
    }
    if req.data_collection == Some(DataCollection::Deny) || base.data_collection.is_none() {
        p.data_collection = req.data_collection.or(base.data_collection);
    }
    if req.zdr == Some(true) || base.zdr.is_none() {
        p.zdr = req.zdr.or(base.zdr);
    }
    p.max_price = match (&base.max_price, &req.max_price) {
        (Some(a), Some(b)) => Some(MaxPrice {
            prompt_usd_per_mtok: min_opt(a.prompt_usd_per_mtok, b.prompt_usd_per_mtok),
            completion_usd_per_mtok: min_opt(a.completion_usd_per_mtok, b.completion_usd_per_mtok),
        }),
        (a, b) => a.clone().or_else(|| b.clone()),
    };
    Some(p)
}

fn min_opt(a: Option<Cost>, b: Option<Cost>) -> Option<Cost> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Applies `profile` (the agent's, else the organisation's, else `None`) to
/// a request's routing, fallback models and server tools.
pub fn effective(
    profile: Option<&RoutingProfile>,
    connection_byok: &[String],
    req_routing: Option<&Routing>,
    req_models: Option<&[String]>,
    req_server_tools: Option<&[String]>,
    req_max_output_tokens: Option<u32>,
) -> Result<Effective, ProfileRefusal> {
    let granted: &[String] = profile
        .and_then(|p| p.server_tools.as_deref())
        .unwrap_or(&[]);
    for t in req_server_tools.unwrap_or(&[]) {
        if !granted.contains(t) {
            return Err(ProfileRefusal::ServerToolNotGranted(t.clone()));
        }
    }
    let asked = req_routing.and_then(|r| r.capacity);
    let capacity = match profile {
        None => asked,
        Some(p) => {
            let allowed = p.capacity.unwrap_or(Capacity::Shared);
            match asked {
                Some(a) if width(a) > width(allowed) => {
                    return Err(ProfileRefusal::CapacityNotGranted {
                        asked: a.as_str(),
                        granted: allowed.as_str(),
                    })
                }
                Some(a) => Some(a),
                None => p.capacity,
            }
        }
    };
    let mut presets: Vec<String> = profile.and_then(|p| p.presets.clone()).unwrap_or_default();
    for s in req_routing
        .and_then(|r| r.presets.clone())
        .unwrap_or_default()
    {
        if !presets.contains(&s) {
            presets.push(s);
        }
    }
    let provider = narrow_provider(
        profile.and_then(|p| p.provider.as_ref()),
        req_routing.and_then(|r| r.provider.as_ref()),
    );
    let byok = profile
        .and_then(|p| p.byok_providers.clone())
        .unwrap_or_else(|| connection_byok.to_vec());
    Ok(Effective {
        routing: Routing {
            presets: (!presets.is_empty()).then_some(presets),
            provider,
            capacity,
        },
        models: req_models
            .map(<[String]>::to_vec)
            .or_else(|| profile.and_then(|p| p.models.clone())),
        server_tools: req_server_tools
            .filter(|t| !t.is_empty())
            .map(<[String]>::to_vec),
        byok,
        max_output_tokens: req_max_output_tokens.or(profile.and_then(|p| p.max_output_tokens)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_events::Sort;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn prefs(f: impl FnOnce(&mut ProviderPrefs)) -> ProviderPrefs {
        let mut p = ProviderPrefs::default();
        f(&mut p);
        p
    }

    type Check = Box<dyn Fn(&Effective) -> bool>;

    struct Case {
        name: &'static str,
        profile: Option<RoutingProfile>,
        routing: Option<Routing>,
        tools: Option<Vec<String>>,
        want: Result<Check, &'static str>,
    }

    #[test]
    #[rustfmt::skip]
    fn profile_and_request_combinations() {
        let web = RoutingProfile { server_tools: Some(s(&["web_search"])), ..Default::default() };
        let byok_only = RoutingProfile { capacity: Some(Capacity::ByokOnly), ..Default::default() };
        let byok_first = RoutingProfile { capacity: Some(Capacity::ByokFirst), ..Default::default() };
        let strict = RoutingProfile {
            presets: Some(s(&["zdr-only"])),
            provider: Some(prefs(|p| {
                p.only = Some(s(&["OpenAI", "Azure"]));
                p.ignore = Some(s(&["Groq"]));
                p.allow_fallbacks = Some(false);
                p.data_collection = Some(DataCollection::Deny);
                p.zdr = Some(true);
                p.max_price = Some(MaxPrice { prompt_usd_per_mtok: Some("2".parse().unwrap()), completion_usd_per_mtok: Some("4".parse().unwrap()) });
            })),
            models: Some(s(&["openai/gpt-4o-mini"])),
            byok_providers: Some(s(&["Anthropic"])),
            max_output_tokens: Some(256),
            ..Default::default()
        };
        let widen = Routing {
            presets: Some(s(&["lowest-latency"])),
            provider: Some(prefs(|p| {
                p.only = Some(s(&["Azure", "Together"]));
                p.ignore = Some(s(&["DeepInfra"]));
                p.allow_fallbacks = Some(true);
                p.data_collection = Some(DataCollection::Allow);
                p.zdr = Some(false);
                p.sort = Some(Sort::Price);
                p.max_price = Some(MaxPrice { prompt_usd_per_mtok: Some("1".parse().unwrap()), completion_usd_per_mtok: Some("9".parse().unwrap()) });
            })),
            capacity: None,
        };
        let cap = |c| Some(Routing { capacity: Some(c), ..Default::default() });
        let cases: Vec<Case> = vec![
            Case { name: "no profile, no tools", profile: None, routing: None, tools: None,
                   want: Ok(Box::new(|e| e.server_tools.is_none() && e.routing == Routing::default())) },
            Case { name: "no profile grants no server tool", profile: None, routing: None, tools: Some(s(&["web_search"])),
                   want: Err("server_tool_not_granted") },
            Case { name: "granted tool passes", profile: Some(web.clone()), routing: None, tools: Some(s(&["web_search"])),
                   want: Ok(Box::new(|e| e.server_tools == Some(s(&["web_search"])))) },
            Case { name: "ungranted tool fails", profile: Some(web.clone()), routing: None, tools: Some(s(&["code_interpreter"])),
                   want: Err("server_tool_not_granted") },
            Case { name: "a grant is not a use", profile: Some(web), routing: None, tools: None,
                   want: Ok(Box::new(|e| e.server_tools.is_none())) },
            Case { name: "profile capacity applies", profile: Some(byok_only.clone()), routing: None, tools: None,
                   want: Ok(Box::new(|e| e.routing.capacity == Some(Capacity::ByokOnly))) },
            Case { name: "request widens byok_only to shared", profile: Some(byok_only.clone()), routing: cap(Capacity::Shared), tools: None,
                   want: Err("capacity_not_granted") },
            Case { name: "request widens byok_only to byok_first", profile: Some(byok_only), routing: cap(Capacity::ByokFirst), tools: None,
                   want: Err("capacity_not_granted") },
            Case { name: "request narrows byok_first to byok_only", profile: Some(byok_first.clone()), routing: cap(Capacity::ByokOnly), tools: None,
                   want: Ok(Box::new(|e| e.routing.capacity == Some(Capacity::ByokOnly))) },
            Case { name: "request widens byok_first to shared", profile: Some(byok_first), routing: cap(Capacity::Shared), tools: None,
                   want: Err("capacity_not_granted") },
            Case { name: "no profile: the request's capacity", profile: None, routing: cap(Capacity::ByokOnly), tools: None,
                   want: Ok(Box::new(|e| e.routing.capacity == Some(Capacity::ByokOnly))) },
            Case { name: "widening provider fields are ignored, narrowing kept", profile: Some(strict.clone()), routing: Some(widen), tools: None,
                   want: Ok(Box::new(|e| {
                       let p = e.routing.provider.as_ref().unwrap();
                       e.routing.presets == Some(s(&["zdr-only", "lowest-latency"]))
                           && p.only == Some(s(&["Azure"]))
                           && p.ignore == Some(s(&["Groq", "DeepInfra"]))
                           && p.allow_fallbacks == Some(false)
                           && p.data_collection == Some(DataCollection::Deny)
                           && p.zdr == Some(true)
                           && p.sort == Some(Sort::Price)
                           && p.max_price == Some(MaxPrice { prompt_usd_per_mtok: Some("1".parse().unwrap()), completion_usd_per_mtok: Some("4".parse().unwrap()) })
                           && e.byok == s(&["Anthropic"])
                           && e.models == Some(s(&["openai/gpt-4o-mini"]))
                           && e.max_output_tokens == Some(256)
                   })) },
            Case { name: "profile alone", profile: Some(strict), routing: None, tools: None,
                   want: Ok(Box::new(|e| e.routing.presets == Some(s(&["zdr-only"])) && e.routing.provider.as_ref().unwrap().zdr == Some(true))) },
            Case { name: "connection BYOK when the profile lists none", profile: Some(RoutingProfile::default()), routing: None, tools: None,
                   want: Ok(Box::new(|e| e.byok == s(&["OpenAI"]))) },
        ];
        for c in cases {
            let got = effective(
                c.profile.as_ref(),
                &s(&["OpenAI"]),
                c.routing.as_ref(),
                None,
                c.tools.as_deref(),
                None,
            );
            match (c.want, got) {
                (Ok(check), Ok(e)) => assert!(check(&e), "{}: {e:?}", c.name),
                (Err(code), Err(e)) => assert_eq!(e.code(), code, "{}", c.name),
                (Ok(_), Err(e)) => panic!("{}: refused {e}", c.name),
                (Err(code), Ok(e)) => panic!("{}: want {code}, got {e:?}", c.name),
            }
        }
    }

    #[test]
    fn risk_and_shape() {
        let mut p = RoutingProfile::default();
        assert_eq!(p.risk(), "low");
        p.server_tools = Some(s(&["web_search"]));
        assert_eq!(p.risk(), "high");
        assert!(p.validate_shape().is_ok());
        p.server_tools = Some(s(&["web search"]));
        assert_eq!(p.validate_shape().unwrap_err().0, "invalid_server_tool");
        let e = serde_json::from_str::<RoutingProfile>(r#"{"capacty":"shared"}"#).unwrap_err();
        assert!(e.to_string().contains("capacty"), "{e}");
    }
}
