//! Routing compiled per request: presets, explicit provider fields and the
//! capacity strategy turned into OpenRouter's `provider` object and `models`
//! fallbacks. Pure: no I/O.
//!
//! Order of application:
//!
//! 1. **Presets**, in the order given:
//!
//!    | preset | effect | requires of the model |
//!    |---|---|---|
//!    | `cheapest-with-tools` | `require_parameters`, `sort: price` | tools |
//!    | `lowest-latency` | `sort: latency` | |
//!    | `reasoning-required` | — | reasoning |
//!    | `zdr-only` | `zdr: true` | |
//!    | `no-data-collection` | `data_collection: deny` | |
//!    | `strict-json` | `require_parameters` | structured outputs |
//!    | `max-price:<usd>` (or `=`) | `max_price {prompt, completion}` = usd per million tokens | |
//!
//! 2. **Explicit provider fields** of the request replace what presets set
//!    (field by field; `max_price` as a whole).
//! 3. **Capacity strategy**, last: `shared` changes nothing; `byok_first`
//!    puts the BYOK providers first in `order` and allows fallbacks;
//!    `byok_only` sets `only` (and `order`) to the BYOK providers and
//!    forbids fallbacks, failing closed (`byok_no_providers`) when none are
//!    configured or all are ignored.
//!
//! # Decisions
//!
//! * **Unknown presets are errors** (`unknown_preset`), never ignored: a
//!   misspelt `zdr-only` must not silently send prompts to retaining
//!   providers.
//! * **Unknown capabilities are enforced by OpenRouter.** When the catalog
//!   does not know the model (no catalog yet), capability presets compile to
//!   `require_parameters: true` and pass; OpenRouter then refuses what no
//!   provider supports.
//! * **OpenRouter-only extensions** (`provider`, `models`) are produced only
//!   for [`Target::OpenRouter`]; for another target the presets are still
//!   validated against the model, but nothing is emitted.
//! * **`byok_first` without BYOK providers is `shared`**: there is nothing to
//!   put first, and failing would punish a harmless preference.

use std::collections::HashMap;

use tally_events::{Capacity, Routing};
use tally_money::Cost;
use tally_openrouter::{MaxPriceUsd, ProviderRouting};

use crate::catalog::Capabilities;

/// Why routing could not be compiled. `code()` is the failure reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// The model cannot satisfy a preset.
    #[error("preset {preset:?} cannot be satisfied by model {model:?}: {why}")]
    PresetUnsatisfiable {
        /// The preset.
        preset: String,
        /// The model.
        model: String,
        /// What is missing.
        why: &'static str,
    },
    /// `byok_only` without any usable BYOK provider.
    #[error("capacity byok_only needs at least one BYOK provider, and none is configured for this org/agent")]
    ByokNoProviders,
    /// A preset slug tally does not know.
    #[error("unknown routing preset {0:?}")]
    UnknownPreset(String),
    /// A preset with an invalid value (e.g. a negative `max-price`).
    #[error("invalid routing preset {preset:?}: {why}")]
    InvalidPreset {
        /// The preset.
        preset: String,
        /// What is wrong.
        why: String,
    },
}

impl RoutingError {
    /// Stable reason code: `preset_unsatisfiable`, `byok_no_providers`,
    /// `unknown_preset`, `invalid_preset`.
    pub fn code(&self) -> &'static str {
        match self {
            RoutingError::PresetUnsatisfiable { .. } => "preset_unsatisfiable",
            RoutingError::ByokNoProviders => "byok_no_providers",
            RoutingError::UnknownPreset(_) => "unknown_preset",
            RoutingError::InvalidPreset { .. } => "invalid_preset",
        }
    }
}

/// One routing preset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preset {
    /// `cheapest-with-tools`.
    CheapestWithTools,
    /// `lowest-latency`.
    LowestLatency,
    /// `reasoning-required`.
    ReasoningRequired,
    /// `zdr-only`.
    ZdrOnly,
    /// `no-data-collection`.
    NoDataCollection,
    /// `strict-json`.
    StrictJson,
    /// `max-price:<usd per million tokens>`.
    MaxPrice(Cost),
}

impl Preset {
    /// Parses a preset slug.
    pub fn parse(slug: &str) -> Result<Preset, RoutingError> {
        let s = slug.trim();
        Ok(match s {
            "cheapest-with-tools" => Preset::CheapestWithTools,
            "lowest-latency" => Preset::LowestLatency,
            "reasoning-required" => Preset::ReasoningRequired,
            "zdr-only" => Preset::ZdrOnly,
            "no-data-collection" => Preset::NoDataCollection,
            "strict-json" => Preset::StrictJson,
            "max-price" => {
                return Err(RoutingError::InvalidPreset {
                    preset: slug.to_owned(),
                    why: "needs a value: max-price:<USD per million tokens>".to_owned(),
                })
            }
            _ => {
                let Some(value) = s
                    .strip_prefix("max-price:")
                    .or_else(|| s.strip_prefix("max-price="))
                else {
                    return Err(RoutingError::UnknownPreset(slug.to_owned()));
                };
                let invalid = |why: String| RoutingError::InvalidPreset {
                    preset: slug.to_owned(),
                    why,
                };
                let v = tally_money::parse_json_number(value.trim())
                    .map_err(|e| invalid(format!("not an amount: {e}")))?;
                let v = Cost::new(v)
                    .map_err(|_| invalid("a price ceiling cannot be negative".to_owned()))?;
                Preset::MaxPrice(v)
            }
        })
    }
}

/// The BYOK providers configured per org, optionally refined per agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ByokProviders {
    by_org: HashMap<String, Vec<String>>,
    by_agent: HashMap<(String, String), Vec<String>>,
}

impl ByokProviders {
    /// No BYOK providers anywhere.
    pub fn new() -> Self {
        ByokProviders::default()
    }

    /// Sets the providers of `org` (for every agent without its own list).
    pub fn with_org(
        mut self,
        org: impl Into<String>,
        providers: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.by_org
            .insert(org.into(), providers.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the providers of one agent of `org` (replaces the org's list).
    pub fn with_agent(
        mut self,
        org: impl Into<String>,
        agent: impl Into<String>,
        providers: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.by_agent.insert(
            (org.into(), agent.into()),
            providers.into_iter().map(Into::into).collect(),
        );
        self
    }

    /// The providers that apply to a request of `org` by `agent`.
    pub fn for_request(&self, org: &str, agent: Option<&str>) -> &[String] {
        if let Some(agent) = agent {
            if let Some(list) = self.by_agent.get(&(org.to_owned(), agent.to_owned())) {
                return list;
            }
        }
        self.by_org.get(org).map_or(&[], Vec::as_slice)
    }
}

/// Where the request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// OpenRouter: routing extensions apply.
    #[default]
    OpenRouter,
    /// Another OpenAI-compatible endpoint: no OpenRouter extensions.
    Other,
}

/// Everything the compilation looks at.
#[derive(Debug, Clone, Copy)]
pub struct RoutingInput<'a> {
    /// The requested model.
    pub model: &'a str,
    /// Fallback models, in order.
    pub fallback_models: Option<&'a [String]>,
    /// The request's routing.
    pub routing: Option<&'a Routing>,
    /// The model's capabilities (`None`: not in the catalog).
    pub capabilities: Option<&'a Capabilities>,
    /// The BYOK providers of the org/agent.
    pub byok: &'a [String],
    /// Where the request goes.
    pub target: Target,
}

/// The compiled routing fields of an OpenRouter request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledRouting {
    /// `provider` (`None` when nothing is set).
    pub provider: Option<ProviderRouting>,
    /// `models` fallbacks (`None` when there are none).
    pub models: Option<Vec<String>>,
}

fn push_unique(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|x| x == item) {
        list.push(item.to_owned());
    }
}

/// Compiles the routing of one request.
pub fn compile(input: &RoutingInput<'_>) -> Result<CompiledRouting, RoutingError> {
    let mut p = ProviderRouting::default();
    let routing = input.routing.cloned().unwrap_or_default();

    // 1. Presets, in order.
    for slug in routing.presets.as_deref().unwrap_or_default() {
        let preset = Preset::parse(slug)?;
        let need = |ok: fn(&Capabilities) -> bool, why: &'static str| match input.capabilities {
            Some(c) if !ok(c) => Err(RoutingError::PresetUnsatisfiable {
                preset: slug.clone(),
                model: input.model.to_owned(),
                why,
            }),
            _ => Ok(()),
        };
        match preset {
            Preset::CheapestWithTools => {
                need(|c| c.tools, "the model does not support tools")?;
                p.require_parameters = Some(true);
                p.sort = Some("price".to_owned());
            }
            Preset::LowestLatency => p.sort = Some("latency".to_owned()),
            Preset::ReasoningRequired => {
                need(|c| c.reasoning, "the model does not support reasoning")?;
                if input.capabilities.is_none() {
                    p.require_parameters = Some(true);
                }
            }
            Preset::ZdrOnly => p.zdr = Some(true),
            Preset::NoDataCollection => p.data_collection = Some("deny".to_owned()),
            Preset::StrictJson => {
                need(
                    |c| c.structured_outputs,
                    "the model does not support structured outputs",
                )?;
                p.require_parameters = Some(true);
            }
            Preset::MaxPrice(v) => {
                p.max_price = Some(MaxPriceUsd {
                    prompt_usd_per_mtok: Some(v),
                    completion_usd_per_mtok: Some(v),
                })
            }
        }
    }

    // 2. Explicit provider fields override presets.
    if let Some(e) = &routing.provider {
        if e.order.is_some() {
            p.order.clone_from(&e.order);
        }
        if e.allow_fallbacks.is_some() {
            p.allow_fallbacks = e.allow_fallbacks;
        }
        if e.only.is_some() {
            p.only.clone_from(&e.only);
        }
        if e.ignore.is_some() {
            p.ignore.clone_from(&e.ignore);
        }
        if let Some(dc) = e.data_collection {
            p.data_collection = Some(dc.as_str().to_owned());
        }
        if e.zdr.is_some() {
            p.zdr = e.zdr;
        }
        if let Some(sort) = e.sort {
            p.sort = Some(sort.as_str().to_owned());
        }
        if let Some(m) = &e.max_price {
            p.max_price = Some(MaxPriceUsd {
                prompt_usd_per_mtok: m.prompt_usd_per_mtok,
                completion_usd_per_mtok: m.completion_usd_per_mtok,
            });
        }
    }

    // 3. Capacity strategy, last.
    let ignored = p.ignore.clone().unwrap_or_default();
    let byok: Vec<String> = input
        .byok
        .iter()
        .filter(|b| !ignored.contains(b))
        .cloned()
        .collect();
    match routing.capacity.unwrap_or(Capacity::Shared) {
        Capacity::Shared => {}
        Capacity::ByokFirst => {
            if !byok.is_empty() {
                let mut order = Vec::new();
                for b in &byok {
                    push_unique(&mut order, b);
                }
                for o in p.order.as_deref().unwrap_or_default() {
                    push_unique(&mut order, o);
                }
                p.order = Some(order);
                p.allow_fallbacks = Some(true);
                if let Some(only) = &mut p.only {
                    for b in &byok {
                        push_unique(only, b);
                    }
                }
            }
        }
        Capacity::ByokOnly => {
            if byok.is_empty() {
                return Err(RoutingError::ByokNoProviders);
            }
            // Explicit order first (restricted to BYOK), then the rest.
            let mut order = Vec::new();
            for o in p.order.as_deref().unwrap_or_default() {
                if byok.contains(o) {
                    push_unique(&mut order, o);
                }
            }
            for b in &byok {
                push_unique(&mut order, b);
            }
            p.only = Some(byok.clone());
            p.order = Some(order);
            p.allow_fallbacks = Some(false);
        }
    }

    if input.target == Target::Other {
        return Ok(CompiledRouting::default());
    }
    let mut models = Vec::new();
    for m in input.fallback_models.unwrap_or_default() {
        if m != input.model {
            push_unique(&mut models, m);
        }
    }
    Ok(CompiledRouting {
        provider: (!p.is_empty()).then_some(p),
        models: (!models.is_empty()).then_some(models),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use tally_events::{DataCollection, MaxPrice, ProviderPrefs, Sort};

    use tally_money::cost;

    const TOOLS_JSON: Capabilities = Capabilities {
        reasoning: false,
        tools: true,
        structured_outputs: true,
        context_length: Some(128_000),
    };
    const REASONING: Capabilities = Capabilities {
        reasoning: true,
        tools: true,
        structured_outputs: false,
        context_length: Some(163_840),
    };
    const BARE: Capabilities = Capabilities {
        reasoning: false,
        tools: false,
        structured_outputs: false,
        context_length: None,
    };

    fn presets(list: &[&str]) -> Routing {
        Routing {
            presets: Some(list.iter().map(|s| s.to_string()).collect()),
            ..Routing::default()
        }
    }

    fn s(list: &[&str]) -> Option<Vec<String>> {
        Some(list.iter().map(|s| s.to_string()).collect())
    }

    fn prov(f: impl FnOnce(&mut ProviderRouting)) -> Option<ProviderRouting> {
        let mut p = ProviderRouting::default();
        f(&mut p);
        Some(p)
    }

    struct Case {
        name: &'static str,
        routing: Routing,
        caps: Option<Capabilities>,
        byok: &'static [&'static str],
        target: Target,
        want: Result<Option<ProviderRouting>, &'static str>,
    }

    fn case(name: &'static str, routing: Routing, caps: Option<Capabilities>) -> Case {
        Case {
            name,
            routing,
            caps,
            byok: &[],
            target: Target::OpenRouter,
            want: Ok(None),
        }
    }

    impl Case {
        fn byok(mut self, b: &'static [&'static str]) -> Self {
            self.byok = b;
            self
        }
        fn target(mut self, t: Target) -> Self {
            self.target = t;
            self
        }
        fn ok(mut self, p: Option<ProviderRouting>) -> Self {
            self.want = Ok(p);
            self
        }
        fn err(mut self, code: &'static str) -> Self {
            self.want = Err(code);
            self
        }
    }

    #[test]
    #[rustfmt::skip]
    fn compilation_table() {
        let explicit = |f: fn(&mut ProviderPrefs)| {
            let mut e = ProviderPrefs::default();
            f(&mut e);
            e
        };
        let cases = vec![
            case("nothing", Routing::default(), Some(TOOLS_JSON)).ok(None),
            case("cheapest-with-tools", presets(&["cheapest-with-tools"]), Some(TOOLS_JSON))
                .ok(prov(|p| { p.require_parameters = Some(true); p.sort = Some("price".into()); })),
            case("cheapest-with-tools without tools", presets(&["cheapest-with-tools"]), Some(BARE)).err("preset_unsatisfiable"),
            case("lowest-latency", presets(&["lowest-latency"]), Some(BARE)).ok(prov(|p| p.sort = Some("latency".into()))),
            case("reasoning-required ok", presets(&["reasoning-required"]), Some(REASONING)).ok(None),
            case("reasoning-required unsatisfiable", presets(&["reasoning-required"]), Some(TOOLS_JSON)).err("preset_unsatisfiable"),
            case("reasoning-required unknown model", presets(&["reasoning-required"]), None).ok(prov(|p| p.require_parameters = Some(true))),
            case("zdr-only", presets(&["zdr-only"]), Some(BARE)).ok(prov(|p| p.zdr = Some(true))),
            case("no-data-collection", presets(&["no-data-collection"]), Some(BARE)).ok(prov(|p| p.data_collection = Some("deny".into()))),
            case("strict-json", presets(&["strict-json"]), Some(TOOLS_JSON)).ok(prov(|p| p.require_parameters = Some(true))),
            case("strict-json unsatisfiable", presets(&["strict-json"]), Some(REASONING)).err("preset_unsatisfiable"),
            case("max-price", presets(&["max-price:2.5"]), Some(BARE))
                .ok(prov(|p| p.max_price = Some(MaxPriceUsd { prompt_usd_per_mtok: Some(cost!("2.5")), completion_usd_per_mtok: Some(cost!("2.5")) }))),
            case("max-price with =", presets(&["max-price=0"]), Some(BARE))
                .ok(prov(|p| p.max_price = Some(MaxPriceUsd { prompt_usd_per_mtok: Some(cost!("0")), completion_usd_per_mtok: Some(cost!("0")) }))),
            case("max-price negative", presets(&["max-price:-1"]), Some(BARE)).err("invalid_preset"),
            case("max-price without value", presets(&["max-price"]), Some(BARE)).err("invalid_preset"),
            case("max-price not a number", presets(&["max-price:cheap"]), Some(BARE)).err("invalid_preset"),
            case("unknown preset", presets(&["zdr-onIy"]), Some(BARE)).err("unknown_preset"),
            case("presets apply in order: last sort wins", presets(&["cheapest-with-tools", "lowest-latency"]), Some(TOOLS_JSON))
                .ok(prov(|p| { p.require_parameters = Some(true); p.sort = Some("latency".into()); })),
            case("presets combine", presets(&["zdr-only", "no-data-collection", "max-price:1"]), Some(BARE))
                .ok(prov(|p| { p.zdr = Some(true); p.data_collection = Some("deny".into()); p.max_price = Some(MaxPriceUsd { prompt_usd_per_mtok: Some(cost!("1")), completion_usd_per_mtok: Some(cost!("1")) }); })),
            case(
                "explicit fields override presets",
                Routing {
                    presets: s(&["cheapest-with-tools", "zdr-only", "no-data-collection", "max-price:5"]),
                    provider: Some(explicit(|e| {
                        e.sort = Some(Sort::Throughput);
                        e.zdr = Some(false);
                        e.data_collection = Some(DataCollection::Allow);
                        e.max_price = Some(MaxPrice { prompt_usd_per_mtok: Some("1".parse().unwrap()), completion_usd_per_mtok: None });
                    })),
                    capacity: None,
                },
                Some(TOOLS_JSON),
            )
            .ok(prov(|p| {
                p.require_parameters = Some(true);
                p.sort = Some("throughput".into());
                p.zdr = Some(false);
                p.data_collection = Some("allow".into());
                p.max_price = Some(MaxPriceUsd { prompt_usd_per_mtok: Some(cost!("1")), completion_usd_per_mtok: None });
            })),
            case(
                "explicit lists pass through",
                Routing {
                    provider: Some(explicit(|e| {
                        e.order = s(&["OpenAI", "Azure"]);
                        e.only = s(&["OpenAI", "Azure"]);
                        e.ignore = s(&["Groq"]);
                        e.allow_fallbacks = Some(false);
                    })),
                    ..Routing::default()
                },
                Some(BARE),
            )
            .ok(prov(|p| {
                p.order = s(&["OpenAI", "Azure"]);
                p.only = s(&["OpenAI", "Azure"]);
                p.ignore = s(&["Groq"]);
                p.allow_fallbacks = Some(false);
            })),
            case("shared changes nothing", Routing { capacity: Some(Capacity::Shared), ..Routing::default() }, Some(BARE)).byok(&["OpenAI"]).ok(None),
            case(
                "byok_first puts BYOK providers first, fallbacks allowed",
                Routing {
                    provider: Some(explicit(|e| { e.order = s(&["Azure", "OpenAI"]); e.allow_fallbacks = Some(false); })),
                    capacity: Some(Capacity::ByokFirst),
                    ..Routing::default()
                },
                Some(BARE),
            )
            .byok(&["OpenAI", "Anthropic"])
            .ok(prov(|p| { p.order = s(&["OpenAI", "Anthropic", "Azure"]); p.allow_fallbacks = Some(true); })),
            case("byok_first without BYOK is shared", Routing { capacity: Some(Capacity::ByokFirst), ..Routing::default() }, Some(BARE)).ok(None),
            case(
                "byok_only: only the BYOK providers, no fallbacks",
                Routing {
                    provider: Some(explicit(|e| { e.order = s(&["Anthropic", "Azure"]); e.allow_fallbacks = Some(true); e.only = s(&["Azure"]); })),
                    capacity: Some(Capacity::ByokOnly),
                    ..Routing::default()
                },
                Some(BARE),
            )
            .byok(&["OpenAI", "Anthropic"])
            .ok(prov(|p| { p.order = s(&["Anthropic", "OpenAI"]); p.only = s(&["OpenAI", "Anthropic"]); p.allow_fallbacks = Some(false); })),
            case("byok_only without providers fails closed", Routing { capacity: Some(Capacity::ByokOnly), ..Routing::default() }, Some(BARE)).err("byok_no_providers"),
            case(
                "byok_only with every BYOK provider ignored fails closed",
                Routing { provider: Some(explicit(|e| e.ignore = s(&["OpenAI"]))), capacity: Some(Capacity::ByokOnly), ..Routing::default() },
                Some(BARE),
            )
            .byok(&["OpenAI"])
            .err("byok_no_providers"),
            case("other target: validated, nothing emitted", presets(&["zdr-only"]), Some(BARE)).target(Target::Other).ok(None),
            case("other target still validates", presets(&["reasoning-required"]), Some(BARE)).target(Target::Other).err("preset_unsatisfiable"),
        ];
        for c in cases {
            let byok: Vec<String> = c.byok.iter().map(|s| s.to_string()).collect();
            let got = compile(&RoutingInput {
                model: "m/x",
                fallback_models: None,
                routing: Some(&c.routing),
                capabilities: c.caps.as_ref(),
                byok: &byok,
                target: c.target,
            });
            match (&c.want, got) {
                (Ok(want), Ok(got)) => assert_eq!(&got.provider, want, "{}", c.name),
                (Err(code), Err(e)) => assert_eq!(e.code(), *code, "{}: {e}", c.name),
                (want, got) => panic!("{}: want {want:?}, got {got:?}", c.name),
            }
        }
    }

    #[test]
    fn fallback_models_are_deduplicated_and_only_for_openrouter() {
        let fallbacks = vec!["a/1".to_string(), "m/x".into(), "b/2".into(), "a/1".into()];
        let mut input = RoutingInput {
            model: "m/x",
            fallback_models: Some(&fallbacks),
            routing: None,
            capabilities: None,
            byok: &[],
            target: Target::OpenRouter,
        };
        let c = compile(&input).unwrap();
        assert_eq!(c.models, s(&["a/1", "b/2"]));
        assert_eq!(c.provider, None);
        input.target = Target::Other;
        assert_eq!(compile(&input).unwrap(), CompiledRouting::default());
    }

    #[test]
    fn byok_lists_per_org_and_agent() {
        let b = ByokProviders::new()
            .with_org("acme", ["OpenAI"])
            .with_agent("acme", "bot", ["Anthropic", "OpenAI"]);
        assert_eq!(b.for_request("acme", None), ["OpenAI".to_string()]);
        assert_eq!(b.for_request("acme", Some("other")), ["OpenAI".to_string()]);
        assert_eq!(b.for_request("acme", Some("bot")).len(), 2);
        assert!(b.for_request("globex", Some("bot")).is_empty());
    }
}
