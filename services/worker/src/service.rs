//! The pull loop and the handling of one generation request.
//!
//! A request goes through named steps, in order (`handle_request`): decode,
//! reply-subject check, the organisation's provider, model check, routing,
//! output cap, the budget hold, the OpenRouter request, the generation.
//! Each step may stop the request with a `Stop`: settle the message as it
//! stands (retry later), fail the request (its failure and result are
//! published, its hold released), or book a generation that already exists
//! as interrupted. Retry-or-fail is decided in one place (`retry_or`): a
//! request is redelivered while attempts remain, then fails as retryable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use chrono::{DateTime, Utc};
use tally_bus::{Bus, ConsumerName, DeadLetterReason, DeadLetterService, Delivery};
use tally_events::{
    CloudEvent, EventType, GenerationCompleted, GenerationFailed, GenerationRequested,
    GenerationResult, GenerationStatus, Input, Payload, ResultError, ResultStatus, Usage,
};
use tally_money::Cost;
use tally_openrouter::{
    InputMessage, OpenRouterClient, ResponsesError, ResponsesInput, ResponsesReply,
    ResponsesRequest, ServerTool,
};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::catalog::Catalog;
use crate::estimate::{approx_tokens, estimate, EstimateInput};
use crate::reserve::Reservations;
use crate::routing::{self, RoutingInput, Target};
use crate::worst_case::{resolve_max_output_tokens, worst_case_of, WorstCaseInput};
use crate::{Metrics, WorkerConfig, WorkerError};
use std::borrow::Cow;
use tally_store::{HoldOutcome, HoldRequest};

/// CloudEvents `source` of the worker's events.
pub const SOURCE: &str = "/tally/worker";
/// Service name in dead-letter subjects (`<prefix>.deadletter.worker`).
pub const DEAD_LETTER_SERVICE: DeadLetterService = DeadLetterService::Worker;

const FETCH_WAIT: Duration = Duration::from_millis(500);
const FETCH_ERROR_PAUSE: Duration = Duration::from_secs(1);
const PUBLISH_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The id of the completed event of a generation.
pub fn completed_event_id(generation_id: &str) -> String {
    format!("completed-{generation_id}")
}

/// The id of the failed event of a request.
pub fn failed_event_id(request_id: &str) -> String {
    format!("failed-{request_id}")
}

/// The id of the result event of a request.
pub fn result_event_id(request_id: &str) -> String {
    format!("result-{request_id}")
}

/// The generation worker. See the [crate documentation](crate).
#[derive(Debug)]
pub struct Worker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    bus: Bus,
    client: OpenRouterClient,
    providers: Option<tally_provider::OrgProviders>,
    reservations: Option<Reservations>,
    catalog: Catalog,
    cfg: WorkerConfig,
    metrics: Arc<Metrics>,
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Nak(Duration),
}

/// A request that ends without a generation.
struct Failure {
    reason: Cow<'static, str>,
    message: String,
    retryable: bool,
}

impl Worker {
    /// A worker; nothing happens until [`run`](Self::run). Without
    /// `reservations` (no database: tests of the generation path only) no
    /// budget is held and nothing prevents a redelivered request from
    /// running again.
    pub fn new(
        bus: Bus,
        client: OpenRouterClient,
        reservations: Option<Reservations>,
        catalog: Catalog,
        cfg: WorkerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Worker {
            shared: Arc::new(Shared {
                bus,
                client,
                providers: None,
                reservations,
                catalog,
                cfg,
                metrics,
            }),
        }
    }

    /// Runs every request on its organisation's own provider connection
    /// (`providers`): its key, its catalog (gating and estimates), its BYOK
    /// providers and routing profile; never on `client`'s key. A request of
    /// an organisation without a connection fails `provider_not_connected`.
    pub fn with_org_providers(mut self, providers: tally_provider::OrgProviders) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.providers = Some(providers);
        }
        self
    }

    /// Runs until `shutdown` becomes `true` (or its sender is dropped):
    /// stops pulling, lets generations in flight finish, and returns.
    ///
    /// Fails at start on an invalid configuration or when the durable
    /// `worker` consumer cannot be opened (run `tally migrate`).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
        let s = self.shared;
        s.cfg.validate()?;
        if s.cfg.prefix != s.bus.prefix() {
            return Err(WorkerError::Config(format!(
                "subject prefix {:?} differs from the bus prefix {:?}",
                s.cfg.prefix,
                s.bus.prefix()
            )));
        }
        let consumer = s.bus.consumer(ConsumerName::Worker).await?;
        s.metrics.catalog_models.set(s.catalog.len() as i64);
        tracing::info!(
            consumer = consumer.name(),
            concurrency = s.cfg.concurrency,
            catalog_models = s.catalog.len(),
            "generation worker started"
        );
        let sweeper = s.reservations.clone().map(|res| {
            tokio::spawn(res.sweep(s.cfg.sweep_interval, s.metrics.clone(), shutdown.clone()))
        });
        let permits = Arc::new(Semaphore::new(s.cfg.concurrency));
        let mut tasks = JoinSet::new();
        while !*shutdown.borrow() {
            while tasks.try_join_next().is_some() {}
            let room = permits.available_permits();
            if room == 0 {
                tokio::select! {
                    _ = tasks.join_next() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            match consumer.fetch(room.min(s.cfg.batch_size), FETCH_WAIT).await {
                Ok(batch) => {
                    for delivery in batch {
                        let s = s.clone();
                        let permit = permits.clone().acquire_owned().await;
                        tasks.spawn(async move {
                            let _permit = permit;
                            handle(&s, delivery).await;
                        });
                    }
                }
                Err(e) => {
                    s.metrics.bus_errors.with_label_values(&[e.code()]).inc();
                    tracing::warn!(error = %e, "pulling generation requests failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(FETCH_ERROR_PAUSE) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
            if shutdown.has_changed().is_err() {
                break;
            }
            s.metrics.catalog_models.set(s.catalog.len() as i64);
        }
        while tasks.join_next().await.is_some() {}
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
        tracing::info!("generation worker stopped");
        Ok(())
    }
}

/// How often, by default, a request still being generated tells JetStream
/// it is in progress, so a generation longer than the ack wait (60 s by
/// default) is not redelivered to another worker and run twice.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

async fn handle(s: &Shared, delivery: Delivery) {
    let settle = {
        let work = process(s, &delivery);
        tokio::pin!(work);
        let mut beat = tokio::time::interval(s.cfg.heartbeat.max(Duration::from_millis(100)));
        beat.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                settle = &mut work => break settle,
                _ = beat.tick() => {
                    if let Err(e) = delivery.in_progress().await {
                        tracing::warn!(error = %e, "in-progress heartbeat failed");
                    }
                }
            }
        }
    };
    let r = match settle {
        Settle::Ack => delivery.ack().await,
        Settle::Nak(d) => delivery.nak(Some(d)).await,
    };
    if let Err(e) = r {
        s.metrics.bus_errors.with_label_values(&[e.code()]).inc();
        tracing::warn!(error = %e, "settling a generation request failed; it will come back");
    }
}

fn backoff(cfg: &WorkerConfig, delivered: i64) -> Duration {
    let exp = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    cfg.base_backoff
        .saturating_mul(2u32.saturating_pow(exp))
        .min(cfg.max_backoff)
}

/// Why the handling of a request stops before its generation completes.
enum Stop {
    /// Settle the message as it stands (acked, or redelivered later).
    Settle(Settle),
    /// The request fails: its failure and result are published.
    Fail(Failure),
    /// An earlier delivery got OpenRouter's headers: the generation exists,
    /// so it is booked as interrupted and never run again.
    Generated {
        generation_id: String,
        worst_case: Option<Cost>,
    },
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Stop {
        Stop::Fail(f)
    }
}

impl Failure {
    /// A failure that sending the same request again cannot cure.
    fn refused(reason: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            message: message.into(),
            retryable: false,
        }
    }
}

/// The organisation's OpenRouter side of one request: its client (key),
/// its catalog and its BYOK providers.
struct Provider {
    client: OpenRouterClient,
    catalog: Catalog,
    byok: Vec<String>,
}

async fn process(s: &Shared, delivery: &Delivery) -> Settle {
    let mut req = match decode_request(s, delivery).await {
        Ok(req) => req,
        Err(settle) => return settle,
    };
    match handle_request(s, delivery, &mut req).await {
        Ok(settle) | Err(Stop::Settle(settle)) => settle,
        Err(Stop::Fail(f)) => fail(s, &req, None, f).await,
        Err(Stop::Generated {
            generation_id,
            worst_case,
        }) => interrupted(s, &req, &generation_id, worst_case).await,
    }
}

/// The steps of one request, in order; any of them may stop it.
async fn handle_request(
    s: &Shared,
    delivery: &Delivery,
    req: &mut GenerationRequested,
) -> Result<Settle, Stop> {
    check_reply_subject(&s.cfg.prefix, req)?;
    let provider = org_provider(s, delivery, req).await?;
    check_models(&provider.catalog, req)?;
    let compiled = compile_routing(s, req, &provider)?;
    let max_output_tokens = output_cap(s, req, &provider.catalog);
    let worst_case = take_hold(s, delivery, req, &provider.catalog, max_output_tokens).await?;
    let body = responses_request(s, req, compiled, max_output_tokens);
    generate(s, delivery, req, &provider, &body, worst_case).await
}

/// The request in the message; a message that is none is dead-lettered and
/// settled.
async fn decode_request(s: &Shared, delivery: &Delivery) -> Result<GenerationRequested, Settle> {
    let e = match tally_events::decode_as::<GenerationRequested>(
        &s.cfg.prefix,
        delivery.subject(),
        delivery.payload(),
    ) {
        Ok(event) => return Ok(event.data),
        Err(e) => e,
    };
    s.metrics.requests.with_label_values(&["dead_letter"]).inc();
    let reason = DeadLetterReason::new(e.code(), e.to_string());
    Err(
        match s
            .bus
            .dead_letter(DEAD_LETTER_SERVICE, delivery, &reason)
            .await
        {
            Ok(()) => Settle::Ack,
            Err(err) => {
                s.metrics.bus_errors.with_label_values(&[err.code()]).inc();
                Settle::Nak(PUBLISH_RETRY_DELAY)
            }
        },
    )
}

/// A reply subject inside tally's own namespace would let a requester
/// publish into tally's streams through the worker (the result body would
/// land on, say, a completed-event subject): the request is refused and its
/// result goes to the org's result subject instead (see `publish_result`).
fn check_reply_subject(prefix: &str, req: &GenerationRequested) -> Result<(), Failure> {
    let Some(subject) = req
        .reply_subject
        .as_deref()
        .filter(|r| is_tally_subject(prefix, r))
    else {
        return Ok(());
    };
    Err(Failure::refused(
        "reply_subject_forbidden",
        format!(
            "reply_subject {:?} is inside tally's own subjects ({prefix}.>); \
             use a subject outside them, such as an _INBOX",
            tally_events::strict::excerpt(subject)
        ),
    ))
}

/// Redelivery later while attempts remain (the retry counted under `code`),
/// else `failure`.
fn retry_or(s: &Shared, delivery: &Delivery, code: &str, failure: Failure) -> Stop {
    if delivery.delivered() < s.cfg.max_attempts {
        s.metrics.retries.with_label_values(&[code]).inc();
        Stop::Settle(Settle::Nak(backoff(&s.cfg, delivery.delivered())))
    } else {
        Stop::Fail(failure)
    }
}

/// The organisation's own provider: its key, catalog, BYOK providers and
/// routing profile, merged into `req` (without `providers`: the fixed
/// client and catalog).
async fn org_provider(
    s: &Shared,
    delivery: &Delivery,
    req: &mut GenerationRequested,
) -> Result<Provider, Stop> {
    let a = &req.attribution;
    let Some(providers) = &s.providers else {
        let byok = s.cfg.byok.for_request(&a.org_id, a.agent_id.as_deref());
        return Ok(Provider {
            client: s.client.clone(),
            catalog: s.catalog.clone(),
            byok: byok.to_vec(),
        });
    };
    let org = match providers.get(&a.org_id).await {
        Ok(org) => org,
        Err(e) => {
            tracing::warn!(error = %e, org_id = a.org_id, "organisation's provider unavailable");
            let failure = Failure {
                reason: "provider_unavailable".into(),
                message: e.to_string(),
                retryable: true,
            };
            return Err(retry_or(s, delivery, e.code(), failure));
        }
    };
    let Some(client) = org.client.clone() else {
        return Err(Failure::refused(
            "provider_not_connected",
            format!(
                "organisation {:?} has not connected OpenRouter; OpenRouter was not called",
                a.org_id
            ),
        )
        .into());
    };
    let eff = tally_provider::profile::effective(
        org.profile(a.agent_id.as_deref()),
        &org.byok_providers,
        req.routing.as_ref(),
        req.models.as_deref(),
        req.server_tools.as_deref(),
        req.max_output_tokens,
    )
    .map_err(|e| Failure::refused(e.code(), e.to_string()))?;
    req.routing = Some(eff.routing);
    req.models = eff.models;
    req.server_tools = eff.server_tools;
    req.max_output_tokens = eff.max_output_tokens;
    let catalog = if org.catalog_synced {
        Catalog::from_models(
            crate::CatalogConfig::default(),
            org.models.values().cloned().collect(),
        )
    } else {
        Catalog::new(crate::CatalogConfig::default())
    };
    Ok(Provider {
        client,
        catalog,
        byok: eff.byok,
    })
}

/// The model and its fallbacks must be known when a catalog is.
fn check_models(catalog: &Catalog, req: &GenerationRequested) -> Result<(), Failure> {
    if !catalog.is_loaded() {
        return Ok(());
    }
    let mut models = std::iter::once(req.attribution.model.as_str())
        .chain(req.models.iter().flatten().map(String::as_str));
    match models.find(|m| catalog.model(m).is_none()) {
        None => Ok(()),
        Some(unknown) => Err(Failure::refused(
            "unknown_model",
            format!("model {unknown:?} is not in OpenRouter's catalog"),
        )),
    }
}

/// OpenRouter's model list and provider preferences for the request.
fn compile_routing(
    s: &Shared,
    req: &GenerationRequested,
    provider: &Provider,
) -> Result<routing::CompiledRouting, Failure> {
    let caps = provider.catalog.capabilities(&req.attribution.model);
    routing::compile(&RoutingInput {
        model: &req.attribution.model,
        fallback_models: req.models.as_deref(),
        routing: req.routing.as_ref(),
        capabilities: caps.as_ref(),
        byok: &provider.byok,
        target: s.cfg.target,
    })
    .map_err(|e| Failure::refused(e.code(), e.to_string()))
}

/// The output token cap sent upstream (and held as the worst case).
fn output_cap(s: &Shared, req: &GenerationRequested, catalog: &Catalog) -> u32 {
    let model_max = catalog
        .model(&req.attribution.model)
        .and_then(|m| m.max_completion_tokens);
    resolve_max_output_tokens(
        req.max_output_tokens,
        None,
        model_max,
        s.cfg.default_max_output_tokens,
    )
}

/// The hold: the request's worst case against every matching budget, and
/// the claim that keeps it from running twice. Returns the worst case held
/// (`None` without reservations, or when a price is unknown or dynamic).
async fn take_hold(
    s: &Shared,
    delivery: &Delivery,
    req: &GenerationRequested,
    catalog: &Catalog,
    max_output_tokens: u32,
) -> Result<Option<Cost>, Stop> {
    let Some(res) = &s.reservations else {
        return Ok(None);
    };
    let mut models = vec![req.attribution.model.clone()];
    models.extend(req.models.iter().flatten().cloned());
    let input = worst_case_input(req, max_output_tokens);
    let catalog_models: Vec<_> = models.iter().map(|m| catalog.model(m)).collect();
    let worst = worst_case_of(catalog_models.iter().map(Option::as_ref), &input);
    let hold = HoldRequest {
        request_id: req.request_id.clone(),
        attribution: req.attribution.clone(),
        fallback_models: models[1..].to_vec(),
        amount_usd: worst,
        max_output_tokens,
        ttl: s.cfg.reservation_ttl,
    };
    let outcome = match res.hold(hold).await {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::warn!(error = %e, request_id = req.request_id, "taking the budget hold failed");
            let failure = Failure {
                reason: "reservation_unavailable".into(),
                message: format!("the budget hold could not be taken: {e}"),
                retryable: true,
            };
            return Err(retry_or(s, delivery, e.code(), failure));
        }
    };
    let holds = &s.metrics.holds;
    match outcome {
        HoldOutcome::Held(_) => {
            holds.with_label_values(&["held"]).inc();
            Ok(worst)
        }
        HoldOutcome::Refused { reservation, now } => {
            let reason = reservation
                .failure_reason
                .unwrap_or_else(|| "budget_exhausted".to_owned());
            if now {
                holds.with_label_values(&["refused"]).inc();
                s.metrics
                    .hold_refusals
                    .with_label_values(&[refusal_label(&reason)])
                    .inc();
            }
            let message = reservation.failure_message.unwrap_or_default();
            Err(Failure::refused(reason, message).into())
        }
        HoldOutcome::Generated(r) => {
            holds.with_label_values(&["generated"]).inc();
            Err(Stop::Generated {
                generation_id: r.generation_id.unwrap_or_default(),
                worst_case: r.amount_usd,
            })
        }
        HoldOutcome::Failed(r) => {
            holds.with_label_values(&["failed"]).inc();
            let reason = r
                .failure_reason
                .unwrap_or_else(|| "request_failed".to_owned());
            Err(Failure::refused(reason, r.failure_message.unwrap_or_default()).into())
        }
    }
}

/// The Responses API request for `req`.
fn responses_request(
    s: &Shared,
    req: &GenerationRequested,
    compiled: routing::CompiledRouting,
    max_output_tokens: u32,
) -> ResponsesRequest {
    let openrouter = s.cfg.target == Target::OpenRouter;
    ResponsesRequest {
        model: req.attribution.model.clone(),
        models: compiled.models,
        input: match &req.input {
            Input::Text(t) => ResponsesInput::Text(t.clone()),
            Input::Messages(ms) => ResponsesInput::Messages(
                ms.iter()
                    .map(|m| InputMessage {
                        role: m.role.as_str().to_owned(),
                        content: m.content.clone(),
                    })
                    .collect(),
            ),
        },
        instructions: req.instructions.clone(),
        // Sent upstream so the worst case held is a bound there too.
        max_output_tokens: Some(max_output_tokens),
        stream: req.stream,
        provider: compiled.provider,
        session_id: req.attribution.session_id.clone(),
        user: req.attribution.user_id.clone(),
        tools: req
            .server_tools
            .as_ref()
            .filter(|t| openrouter && !t.is_empty())
            .map(|t| t.iter().map(|k| ServerTool { kind: k.clone() }).collect()),
    }
}

/// The generation, with the hold's heartbeat, and what follows from its
/// outcome.
async fn generate(
    s: &Shared,
    delivery: &Delivery,
    req: &GenerationRequested,
    provider: &Provider,
    body: &ResponsesRequest,
    worst_case: Option<Cost>,
) -> Result<Settle, Stop> {
    let started = Instant::now();
    let generation = run_generation(s, &provider.client, req, body);
    let outcome = with_hold_heartbeat(s, &req.request_id, generation).await;
    s.metrics
        .openrouter_seconds
        .observe(started.elapsed().as_secs_f64());
    match outcome {
        Ok(reply) => Ok(complete(s, req, &provider.catalog, reply).await),
        // The generation exists (its headers came) but its body was lost:
        // never run it again; the reconciler finds its cost.
        Err((e, Some(generation_id))) => {
            tracing::warn!(error = %e, request_id = req.request_id, generation_id, "generation body lost after its headers");
            Err(Stop::Generated {
                generation_id,
                worst_case,
            })
        }
        Err((e, None)) if e.is_retryable() && delivery.delivered() < s.cfg.max_attempts => {
            s.metrics.retries.with_label_values(&[e.code()]).inc();
            let wait = e
                .retry_after()
                .unwrap_or_else(|| backoff(&s.cfg, delivery.delivered()));
            tracing::info!(error = %e, request_id = req.request_id, wait_ms = wait.as_millis() as u64, "retryable OpenRouter error; retrying later");
            Ok(Settle::Nak(wait))
        }
        Err((e, None)) => Err(Failure {
            reason: failure_reason(&e).into(),
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
        .into()),
    }
}

/// The failed-event reason for an OpenRouter error.
pub fn failure_reason(e: &ResponsesError) -> &'static str {
    match e.code() {
        "unknown_model" => "unknown_model",
        "bad_request" => "upstream_bad_request",
        "no_endpoints" => "no_provider_available",
        "payment_required" => "upstream_payment_required",
        "rate_limited" => "upstream_rate_limited",
        "unavailable" | "server_error" => "upstream_unavailable",
        "bad_gateway" => "upstream_provider_error",
        "edge_timeout" => "upstream_timeout",
        "provider_overloaded" => "upstream_overloaded",
        "auth" => "upstream_auth",
        "timeout" | "transport" => "upstream_unreachable",
        "malformed_reply" => "upstream_malformed_reply",
        "invalid_config" => "worker_misconfigured",
        _ => "upstream_error",
    }
}

async fn publish<T: Payload>(s: &Shared, ev: &CloudEvent<T>, subject: &str) -> bool {
    match s.bus.publish(subject, &ev.id, ev.to_json().into()).await {
        Ok(()) => true,
        Err(e) => {
            s.metrics.bus_errors.with_label_values(&[e.code()]).inc();
            tracing::warn!(error = %e, subject, "publishing failed; the request will be retried");
            false
        }
    }
}

/// Whether `subject` lies in tally's own subject space (`<prefix>` or
/// `<prefix>.…`), where no requester may direct the worker's output.
pub fn is_tally_subject(prefix: &str, subject: &str) -> bool {
    subject == prefix
        || subject
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Publishes the result: to the reply subject (plain NATS, the requester
/// listens there) or to the org's result subject (JetStream); a reply
/// subject inside tally's own subjects is never used.
async fn publish_result(s: &Shared, req: &GenerationRequested, result: GenerationResult) -> bool {
    let id = result_event_id(&req.request_id);
    let reply = req
        .reply_subject
        .as_ref()
        .filter(|r| !is_tally_subject(&s.cfg.prefix, r));
    match reply {
        Some(subject) => {
            let ev = CloudEvent::new(id, SOURCE, subject.clone(), Utc::now(), result);
            let client = s.bus.client();
            let r = client.publish(subject.clone(), ev.to_json().into()).await;
            match r {
                Ok(()) => {
                    let _ = client.flush().await;
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, subject, "publishing the result failed");
                    false
                }
            }
        }
        None => {
            let ev = CloudEvent::new_on_bus(&s.cfg.prefix, id, SOURCE, Utc::now(), result);
            let subject =
                EventType::GenerationResult.subject(&s.cfg.prefix, &req.attribution.org_id, None);
            publish(s, &ev, &subject).await
        }
    }
}

async fn fail(
    s: &Shared,
    req: &GenerationRequested,
    generation_id: Option<String>,
    f: Failure,
) -> Settle {
    // The hold goes first, with the reason: a redelivery then answers the
    // same failure instead of running the request (see `reserve`).
    if let Some(res) = &s.reservations {
        if let Err(e) = res
            .store()
            .release_hold(&req.request_id, &f.reason, &f.message)
            .await
        {
            if !matches!(e, tally_store::StoreError::NotFound { .. }) {
                s.metrics.retries.with_label_values(&[e.code()]).inc();
                tracing::warn!(error = %e, request_id = req.request_id, "releasing the hold failed; retrying");
                return Settle::Nak(PUBLISH_RETRY_DELAY);
            }
        }
    }
    let now = Utc::now();
    let failed = GenerationFailed {
        request_id: req.request_id.clone(),
        attribution: req.attribution.clone(),
        generation_id: generation_id.clone(),
        reason: f.reason.to_string(),
        message: f.message.clone(),
        retryable: f.retryable,
        failed_at: now,
    };
    let ev = CloudEvent::new_on_bus(
        &s.cfg.prefix,
        failed_event_id(&req.request_id),
        SOURCE,
        now,
        failed,
    );
    let subject = ev.bus_subject(&s.cfg.prefix);
    if !publish(s, &ev, &subject).await {
        return Settle::Nak(PUBLISH_RETRY_DELAY);
    }
    let result = GenerationResult {
        request_id: req.request_id.clone(),
        org_id: req.attribution.org_id.clone(),
        generation_id,
        status: ResultStatus::Failed,
        output_text: None,
        error: Some(ResultError {
            reason: f.reason.to_string(),
            message: f.message.clone(),
        }),
        finished_at: now,
    };
    // The failed event is the record; a lost result does not block the ack.
    publish_result(s, req, result).await;
    s.metrics.requests.with_label_values(&["failed"]).inc();
    s.metrics.failures.with_label_values(&[&f.reason]).inc();
    tracing::info!(
        request_id = req.request_id,
        reason = %f.reason,
        "generation request failed"
    );
    Settle::Ack
}

/// A bounded metric label for a refusal reason.
fn refusal_label(reason: &str) -> &'static str {
    match reason {
        "budget_exhausted" => "budget_exhausted",
        "unpriced_model" => "unpriced_model",
        _ => "other",
    }
}

/// What the worst case of `req` is computed from.
fn worst_case_input(req: &GenerationRequested, max_output_tokens: u32) -> WorstCaseInput {
    let (bytes, messages) = match &req.input {
        Input::Text(t) => (t.len(), 0),
        Input::Messages(ms) => (ms.iter().map(|m| m.content.len()).sum(), ms.len()),
    };
    let instructions = req.instructions.as_ref().map_or(0, String::len);
    WorstCaseInput {
        input_bytes: (bytes + instructions) as u64,
        messages: messages as u64 + u64::from(instructions > 0),
        max_output_tokens,
        web_search_tools: req
            .server_tools
            .iter()
            .flatten()
            .filter(|t| t.contains("web_search"))
            .count() as u64,
    }
}

/// Calls OpenRouter, records the generation id the moment the response
/// headers arrive, then reads the body. An error after the headers carries
/// the generation id: that generation exists and must not be run again.
async fn run_generation(
    s: &Shared,
    client: &OpenRouterClient,
    req: &GenerationRequested,
    body: &ResponsesRequest,
) -> Result<ResponsesReply, (ResponsesError, Option<String>)> {
    let pending = client
        .start_responses(body, req.stream)
        .await
        .map_err(|e| (e, None))?;
    let header_id = pending.generation_id().map(str::to_owned);
    if let Some(id) = &header_id {
        record_generation(s, &req.request_id, id).await;
    }
    let reply = pending.finish().await.map_err(|e| (e, header_id.clone()))?;
    if header_id.is_none() {
        // Only the body named it: recorded before anything is published, so
        // a crash from here on never runs the request again.
        record_generation(s, &req.request_id, &reply.generation_id).await;
    }
    Ok(reply)
}

/// Records a request's generation id in its reservation (a few quick
/// tries; the generation goes on either way, and settlement records it
/// again).
async fn record_generation(s: &Shared, request_id: &str, generation_id: &str) {
    let Some(res) = &s.reservations else {
        return;
    };
    let recorded = (|| {
        res.store()
            .record_generation(request_id, generation_id, s.cfg.reservation_ttl)
    })
    .retry(tally_store::retry::GENERATION_ID.backoff())
    .await;
    if let Err(e) = recorded {
        s.metrics.retries.with_label_values(&[e.code()]).inc();
        tracing::error!(error = %e, request_id, generation_id, "could not record the generation id; a crash now would run the request again");
    }
}

/// Runs `work` while extending the request's hold every third of its time
/// to live, so a long generation keeps its hold and a crashed worker's
/// hold expires.
async fn with_hold_heartbeat<T>(
    s: &Shared,
    request_id: &str,
    work: impl std::future::Future<Output = T>,
) -> T {
    let Some(res) = &s.reservations else {
        return work.await;
    };
    let every = (s.cfg.reservation_ttl / 3).max(Duration::from_millis(50));
    let mut beat = tokio::time::interval(every);
    beat.tick().await;
    tokio::pin!(work);
    let ids = [request_id.to_owned()];
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = beat.tick() => {
                if let Err(e) = res.store().extend_holds(&ids, s.cfg.reservation_ttl).await {
                    tracing::warn!(error = %e, request_id, "extending the hold failed");
                }
            }
        }
    }
}

/// Publishes the completed event of `req`'s generation. `Err` is how the
/// delivery must be settled instead of going on: the event would be
/// invalid (never published: consumers would dead-letter it; the request
/// fails) or the publish failed (retried later).
async fn publish_completed(
    s: &Shared,
    req: &GenerationRequested,
    completed: GenerationCompleted,
    now: DateTime<Utc>,
) -> Result<(), Settle> {
    let id = completed_event_id(&completed.generation_id);
    let ev = CloudEvent::new_on_bus(&s.cfg.prefix, id, SOURCE, now, completed);
    if let Err(e) = ev.validate() {
        tracing::error!(error = %e, request_id = req.request_id, "completed event would be invalid");
        return Err(fail(
            s,
            req,
            None,
            Failure {
                reason: "upstream_malformed_reply".into(),
                message: format!("the generation cannot be recorded: {e}"),
                retryable: false,
            },
        )
        .await);
    }
    let subject = ev.bus_subject(&s.cfg.prefix);
    if !publish(s, &ev, &subject).await {
        return Err(Settle::Nak(PUBLISH_RETRY_DELAY));
    }
    Ok(())
}

/// A generation that exists (OpenRouter sent its headers) but whose reply
/// this worker does not have — a redelivery after a crash, or a body lost
/// in transit. It is never run again: the completed event carries no
/// actual cost (the reconciler asks OpenRouter for it) and, as estimate,
/// the worst case that was held, so a hard budget is never under-counted
/// in the meantime.
async fn interrupted(
    s: &Shared,
    req: &GenerationRequested,
    generation_id: &str,
    worst_case: Option<Cost>,
) -> Settle {
    let now = Utc::now();
    let completed = GenerationCompleted {
        generation_id: generation_id.to_owned(),
        attribution: req.attribution.clone(),
        provider: None,
        completed_at: now,
        usage: Usage::default(),
        is_byok: false,
        actual_cost_usd: None,
        estimated_cost_usd: worst_case,
        status: GenerationStatus::Cancelled,
        request_id: Some(req.request_id.clone()),
        upstream_inference_cost_usd: None,
    };
    if let Err(settle) = publish_completed(s, req, completed, now).await {
        return settle;
    }
    let result = GenerationResult {
        request_id: req.request_id.clone(),
        org_id: req.attribution.org_id.clone(),
        generation_id: Some(generation_id.to_owned()),
        status: ResultStatus::Cancelled,
        output_text: None,
        error: Some(ResultError {
            reason: "generation_interrupted".to_owned(),
            message: "the generation ran but its reply was lost; it is not run again \
                      and its cost is reconciled from OpenRouter"
                .to_owned(),
        }),
        finished_at: now,
    };
    publish_result(s, req, result).await;
    s.metrics.not_rerun.inc();
    s.metrics.requests.with_label_values(&["cancelled"]).inc();
    s.metrics.missing_actual_cost.inc();
    Metrics::add_usd(&s.metrics.estimated_cost_usd, worst_case);
    tracing::info!(
        request_id = req.request_id,
        generation_id,
        "generation already ran; published without running it again"
    );
    Settle::Ack
}

fn status_of(reply: &ResponsesReply) -> GenerationStatus {
    if reply.aborted {
        return GenerationStatus::Cancelled;
    }
    match reply.status.as_deref() {
        Some("cancelled") => GenerationStatus::Cancelled,
        Some("failed") => GenerationStatus::Errored,
        _ if reply.error.is_some() && reply.usage.is_none() => GenerationStatus::Errored,
        _ => GenerationStatus::Completed,
    }
}

fn input_text(req: &GenerationRequested) -> String {
    let mut text = match &req.input {
        Input::Text(t) => t.clone(),
        Input::Messages(ms) => ms
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    };
    if let Some(i) = &req.instructions {
        text.push('\n');
        text.push_str(i);
    }
    text
}

async fn complete(
    s: &Shared,
    req: &GenerationRequested,
    catalog: &Catalog,
    reply: ResponsesReply,
) -> Settle {
    let now = Utc::now();
    let status = status_of(&reply);
    let completed = completed_event(req, catalog, &reply, status, now);
    let (actual, estimated) = (completed.actual_cost_usd, completed.estimated_cost_usd);
    if let Err(settle) = publish_completed(s, req, completed, now).await {
        return settle;
    }
    publish_result(s, req, result_of(req, &reply, status, now)).await;
    count_completed(&s.metrics, status, actual, estimated);
    Settle::Ack
}

/// The completed event of a reply: OpenRouter's usage and cost when it sent
/// them, else zero tokens and an estimate of what was sent and received.
fn completed_event(
    req: &GenerationRequested,
    catalog: &Catalog,
    reply: &ResponsesReply,
    status: GenerationStatus,
    now: DateTime<Utc>,
) -> GenerationCompleted {
    let model = reply
        .model
        .clone()
        .unwrap_or_else(|| req.attribution.model.clone());
    let (usage, est_input) = usage_and_estimate_input(req, reply);
    let pricing = catalog
        .pricing(&model)
        .or_else(|| catalog.pricing(&req.attribution.model));
    let byok = reply.usage.as_ref().filter(|u| u.is_byok);
    GenerationCompleted {
        generation_id: reply.generation_id.clone(),
        attribution: req.attribution.served_by(model),
        provider: reply.provider.clone(),
        completed_at: now,
        usage,
        is_byok: byok.is_some(),
        actual_cost_usd: reply.usage.as_ref().and_then(|u| u.actual_cost()),
        estimated_cost_usd: pricing.and_then(|p| estimate(&p, &est_input)),
        status,
        request_id: Some(req.request_id.clone()),
        upstream_inference_cost_usd: byok.and_then(|u| u.upstream_inference_cost),
    }
}

/// The token counts for the event and the estimate. Without usage (an
/// aborted stream) the event's counts stay zero and the estimate
/// approximates the text sent and received.
fn usage_and_estimate_input(
    req: &GenerationRequested,
    reply: &ResponsesReply,
) -> (Usage, EstimateInput) {
    let Some(u) = &reply.usage else {
        let searches_asked = req
            .server_tools
            .iter()
            .flatten()
            .filter(|t| t.contains("web_search"))
            .count() as u64;
        let input = EstimateInput {
            prompt_tokens: approx_tokens(&input_text(req)),
            completion_tokens: approx_tokens(&reply.output_text),
            web_search_calls: searches_asked,
            ..EstimateInput::default()
        };
        return (Usage::default(), input);
    };
    let usage = Usage {
        prompt_tokens: u.input_tokens,
        completion_tokens: u.output_tokens,
        reasoning_tokens: u.reasoning_tokens,
        cached_tokens: u.cached_tokens,
        cache_write_tokens: u.cache_write_tokens,
    };
    let input = EstimateInput {
        prompt_tokens: u.input_tokens,
        cached_tokens: u.cached_tokens.unwrap_or(0),
        cache_write_tokens: u.cache_write_tokens.unwrap_or(0),
        completion_tokens: u.output_tokens,
        reasoning_tokens: u.reasoning_tokens.unwrap_or(0),
        web_search_calls: u.web_search_requests.unwrap_or(0),
    };
    (usage, input)
}

/// The result the requester reads: the status, the output text, and for a
/// cancelled or errored generation the reason.
fn result_of(
    req: &GenerationRequested,
    reply: &ResponsesReply,
    status: GenerationStatus,
    now: DateTime<Utc>,
) -> GenerationResult {
    let (result_status, error) = match status {
        GenerationStatus::Completed => (ResultStatus::Completed, None),
        GenerationStatus::Cancelled => (
            ResultStatus::Cancelled,
            Some(ResultError {
                reason: "stream_aborted".to_owned(),
                message: "the stream ended before its final event".to_owned(),
            }),
        ),
        GenerationStatus::Errored => (
            ResultStatus::Errored,
            Some(ResultError {
                reason: "generation_errored".to_owned(),
                message: reply
                    .error
                    .clone()
                    .unwrap_or_else(|| "the generation failed part-way".to_owned()),
            }),
        ),
    };
    GenerationResult {
        request_id: req.request_id.clone(),
        org_id: req.attribution.org_id.clone(),
        generation_id: Some(reply.generation_id.clone()),
        status: result_status,
        output_text: (!reply.output_text.is_empty()).then(|| reply.output_text.clone()),
        error,
        finished_at: now,
    }
}

/// Counts one finished request, a missing actual cost, and the money.
fn count_completed(
    metrics: &Metrics,
    status: GenerationStatus,
    actual: Option<Cost>,
    estimated: Option<Cost>,
) {
    metrics.requests.with_label_values(&[status.as_str()]).inc();
    if actual.is_none() {
        metrics.missing_actual_cost.inc();
    }
    Metrics::add_usd(&metrics.actual_cost_usd, actual);
    Metrics::add_usd(&metrics.estimated_cost_usd, estimated);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let cfg = WorkerConfig {
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            ..WorkerConfig::default()
        };
        let got: Vec<u64> = (1..=6).map(|n| backoff(&cfg, n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn statuses() {
        let mut r = ResponsesReply::default();
        assert_eq!(status_of(&r), GenerationStatus::Completed);
        r.status = Some("failed".into());
        assert_eq!(status_of(&r), GenerationStatus::Errored);
        r.aborted = true;
        assert_eq!(status_of(&r), GenerationStatus::Cancelled);
    }
}
