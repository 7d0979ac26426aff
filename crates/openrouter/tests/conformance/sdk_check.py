#!/usr/bin/env python3
"""Drives the OpenRouter simulator through OpenRouter's official Python SDK
(`openrouter`, typed models generated from OpenRouter's OpenAPI document) and
the official `openai` SDK, and fails on anything they would not accept.

Usage: sdk_check.py CONFIG.json OUT_DIR

CONFIG.json maps a scenario name to the base URL (".../api/v1") of a
simulator configured for it ("key": the API key the simulators accept):

  plain         no faults, no BYOK
  byok          every generation BYOK
  missing_cost  every generation reply has usage.cost null
  abort         every stream is cut before its final event
  mid_stream    every stream ends with an error event after some output
  e402 e502 e524 e529
                every generation request answered with that HTTP status

For every reply the script checks, with the SDK's own typed models:

* it validates (no ResponseValidationError, no event decoded as an
  "unknown" variant because its payload failed validation);
* nothing the simulator sent is silently dropped: every field of the raw
  JSON that the typed model declares and that is not null comes back set
  (not UNSET, not None) and, for numbers, with the same value;
* every cost field the simulator sent comes back as a number.

Every raw body is written to OUT_DIR, and OUT_DIR/report.json lists them with
the exact decimal text of every cost field (read from the raw JSON with
`Decimal`, never through a float), so tally's own client can be run against
the same bytes and compared digit for digit.

Exit status 0 when every check passed; 1 with one line per problem otherwise.
"""

import json
import os
import sys
import warnings
from decimal import Decimal

import httpx
import pydantic

import openai
import openrouter
from openrouter import components, errors, operations
from openrouter.types.basemodel import Unset
from openrouter.utils import unmarshal_json
from openrouter.utils.retries import BackoffStrategy, RetryConfig

warnings.simplefilter("ignore")

PROBLEMS = []
REPORT = []
KEY = "sk-or-test"  # replaced by the config's "key"
# The SDK retries 5xx replies by default; the fault cases must see them once.
NO_RETRY = RetryConfig("none", BackoffStrategy(1, 1, 1.0, 1), False)


def problem(case, text):
    PROBLEMS.append(f"{case}: {text}")


def short(v):
    t = json.dumps(v, default=str)
    return t if len(t) < 160 else t[:157] + "..."


# ---------------------------------------------------------------- walkers


def walk(case, model, raw, path):
    """Compares a typed model with the raw JSON it was made from."""
    if isinstance(model, Unset):
        problem(case, f"{path}: dropped by the SDK (UNSET) although the reply had {short(raw)}")
        return
    if getattr(model, "is_unknown", False) is True:
        problem(case, f"{path}: the SDK did not accept this object (decoded as unknown): {short(raw)}")
        return
    if isinstance(model, pydantic.BaseModel):
        if not isinstance(raw, dict):
            return
        for name, field in type(model).model_fields.items():
            key = field.alias or name
            if key not in raw or raw[key] is None:
                continue
            value = getattr(model, name)
            if value is None or isinstance(value, Unset):
                problem(case, f"{path}.{key}: sent {short(raw[key])}, the SDK kept {value!r}")
                continue
            walk(case, value, raw[key], f"{path}.{key}")
    elif isinstance(model, (list, tuple)) and isinstance(raw, list):
        if len(model) != len(raw):
            problem(case, f"{path}: {len(raw)} items sent, {len(model)} kept")
        for i, (m, r) in enumerate(zip(model, raw)):
            walk(case, m, r, f"{path}[{i}]")
    elif isinstance(model, dict) and isinstance(raw, dict):
        for k, r in raw.items():
            if k in model and r is not None:
                walk(case, model[k], r, f"{path}.{k}")
    elif isinstance(raw, Decimal) and not isinstance(model, bool):
        if isinstance(model, (int, float)) and float(raw) != float(model):
            problem(case, f"{path}: sent {raw}, the SDK read {model!r}")


def walk_typed(case, model, path):
    """Checks an SDK result without its raw text: no field the SDK saw is
    UNSET, and no object is an unknown variant."""
    if getattr(model, "is_unknown", False) is True:
        problem(case, f"{path}: decoded as unknown: {short(getattr(model, 'raw', None))}")
        return
    if isinstance(model, pydantic.BaseModel):
        for name in sorted(model.__pydantic_fields_set__):
            value = getattr(model, name, None)
            if isinstance(value, Unset):
                problem(case, f"{path}.{name}: present in the reply but dropped by the SDK")
            else:
                walk_typed(case, value, f"{path}.{name}")
    elif isinstance(model, (list, tuple)):
        for i, m in enumerate(model):
            walk_typed(case, m, f"{path}[{i}]")


def typed(case, typ, text, path="$"):
    """Validates `text` as the SDK does (its own unmarshal) and walks it."""
    try:
        model = unmarshal_json(text, typ)
    except Exception as e:  # the SDK raises ResponseValidationError from this
        problem(case, f"{path}: the SDK refuses the reply: {str(e)[:600]}")
        return None
    walk(case, model, json.loads(text, parse_float=Decimal), path)
    return model


# ------------------------------------------------------------------ costs


def costs_of(usage, names):
    """The exact decimal text of the cost fields of a raw usage object."""
    out = {}
    if not isinstance(usage, dict):
        return out
    if "cost" in usage:
        out["cost"] = None if usage["cost"] is None else str(usage["cost"])
    details = usage.get("cost_details") or {}
    for n in names:
        if n in details:
            out[f"cost_details.{n}"] = None if details[n] is None else str(details[n])
    return out


CHAT_COST = ["upstream_inference_cost", "upstream_inference_prompt_cost", "upstream_inference_completions_cost"]
RESP_COST = ["upstream_inference_cost", "upstream_inference_input_cost", "upstream_inference_output_cost"]


def require_costs(case, costs, expect_cost):
    if expect_cost:
        for k, v in costs.items():
            if v is None:
                problem(case, f"usage.{k} is null")
        for k in ["cost"] + [f"cost_details.{n}" for n in (CHAT_COST if "chat" in case else RESP_COST)]:
            if k not in costs:
                problem(case, f"usage.{k} missing")


def sdk_cost_matches(case, label, sdk_value, exact):
    if exact is None:
        return
    if sdk_value is None or isinstance(sdk_value, Unset):
        problem(case, f"{label}: the SDK has no value, the reply had {exact}")
    elif float(Decimal(exact)) != sdk_value:
        problem(case, f"{label}: the SDK read {sdk_value!r}, the reply had {exact}")


def sdk_usage_matches(case, usage, costs, names):
    """The SDK's usage cost and cost details equal the exact decimals sent."""
    sdk_cost_matches(case, "usage.cost", usage.cost, costs.get("cost"))
    for n in names:
        sdk_cost_matches(case, f"usage.cost_details.{n}", getattr(usage.cost_details, n, None), costs.get(f"cost_details.{n}"))


SEQ = [0]


def save(out_dir, case, kind, text, generation_id, costs, extra=None):
    SEQ[0] += 1
    name = f"{SEQ[0]:02d}-{case}.{'sse' if kind.endswith('stream') else 'json'}"
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
        f.write(text)
    entry = {"case": case, "kind": kind, "file": name, "generation_id": generation_id, "costs": costs}
    if extra:
        entry.update(extra)
    REPORT.append(entry)


def sse_events(text):
    """(event, data) pairs of an SSE body, comments skipped."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith(":") or not line:
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
        if data:
            out.append((event, "\n".join(data)))
    return out


# ------------------------------------------------------------------ cases

CHAT_BODY = {
    "model": "openai/gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are terse and you always answer in exactly one short sentence, please."},
        {"role": "user", "content": "What is two plus two? Explain the answer in a few simple words for a child."},
    ],
    "max_tokens": 16,
}
RESP_BODY = {
    "model": "deepseek/deepseek-r1",
    "input": "What is two plus two? Explain the answer in a few simple words for a child, and be brief.",
    "instructions": "You are terse.",
    "max_output_tokens": 16,
}


def raw_post(base, path, body):
    return httpx.post(f"{base}{path}", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)


def stream_post(case, base, path, body):
    """Posts `body` with "stream": true and reads the whole text: the
    X-Generation-Id, the text and whether the connection was cut; None (a
    problem noted) when the status is not 200."""
    text, cut = "", False
    with httpx.stream("POST", f"{base}{path}", json=dict(body, stream=True), headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as r:
        if r.status_code != 200:
            problem(case, f"HTTP {r.status_code}")
            return None
        gid = r.headers.get("x-generation-id")
        try:
            for chunk in r.iter_text():
                text += chunk
        except httpx.HTTPError:
            cut = True
    return gid, text, cut


def chat_raw(out_dir, name, base, expect_cost=True):
    case = f"chat-{name}"
    r = raw_post(base, "/chat/completions", CHAT_BODY)
    if r.status_code != 200:
        problem(case, f"HTTP {r.status_code}: {r.text[:200]}")
        return
    gid = r.headers.get("x-generation-id")
    model = typed(case, components.ChatResult, r.text)
    raw = json.loads(r.text, parse_float=Decimal)
    if raw.get("id") != gid:
        problem(case, f"body id {raw.get('id')} differs from X-Generation-Id {gid}")
    costs = costs_of(raw.get("usage"), CHAT_COST)
    require_costs(case, costs, expect_cost)
    if model is not None and model.usage is not None and expect_cost:
        sdk_usage_matches(case, model.usage, costs, CHAT_COST)
    save(out_dir, case, "chat", r.text, gid, costs)


def chat_stream_raw(out_dir, name, base, expect="usage"):
    case = f"chat-stream-{name}"
    read = stream_post(case, base, "/chat/completions", CHAT_BODY)
    if read is None:
        return
    gid, text, cut = read
    events = sse_events(text)
    usage, costs, error = None, {}, None
    for i, (_, data) in enumerate(events):
        if data == "[DONE]":
            if i != len(events) - 1:
                problem(case, "[DONE] is not the last event")
            continue
        chunk = typed(case, components.ChatStreamChunk, data, f"chunk[{i}]")
        raw = json.loads(data, parse_float=Decimal)
        if raw.get("id") != gid:
            problem(case, f"chunk[{i}] id {raw.get('id')} differs from X-Generation-Id {gid}")
        if raw.get("usage") is not None:
            usage = raw["usage"]
            costs = costs_of(usage, CHAT_COST)
            if chunk is not None and chunk.usage is not None:
                sdk_usage_matches(case, chunk.usage, costs, CHAT_COST)
        if raw.get("error") is not None:
            error = raw["error"]
            if not raw.get("choices") or raw["choices"][0].get("finish_reason") != "error":
                problem(case, "an error chunk must finish its choice with finish_reason \"error\"")
    has_done = bool(events) and events[-1][1] == "[DONE]"
    if expect == "usage":
        if usage is None:
            problem(case, "no usage chunk")
        require_costs(case, costs, True)
        if not has_done:
            problem(case, "the stream does not end with data: [DONE]")
    elif expect == "abort":
        if usage is not None or has_done or not cut:
            problem(case, f"an aborted stream must be cut without usage or [DONE] (cut={cut})")
    elif expect == "error":
        if error is None:
            problem(case, "no error chunk")
        if not has_done:
            problem(case, "the stream does not end with data: [DONE] after the error")
    save(out_dir, case, "chat_stream", text, gid, costs, {"expect": expect})


RESP_EVENTS_REQUIRED = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def responses_raw(out_dir, name, base, expect_cost=True):
    case = f"responses-{name}"
    r = raw_post(base, "/responses", RESP_BODY)
    if r.status_code != 200:
        problem(case, f"HTTP {r.status_code}: {r.text[:200]}")
        return
    gid = r.headers.get("x-generation-id")
    model = typed(case, components.OpenResponsesResult, r.text)
    raw = json.loads(r.text, parse_float=Decimal)
    costs = costs_of(raw.get("usage"), RESP_COST)
    require_costs(case, costs, expect_cost)
    if model is not None and expect_cost:
        if isinstance(model.usage, Unset) or model.usage is None:
            problem(case, "usage: the SDK has none")
        else:
            sdk_usage_matches(case, model.usage, costs, RESP_COST)
    save(out_dir, case, "responses", r.text, gid, costs)


def responses_stream_raw(out_dir, name, base, expect="usage"):
    case = f"responses-stream-{name}"
    read = stream_post(case, base, "/responses", RESP_BODY)
    if read is None:
        return
    gid, text, cut = read
    events = sse_events(text)
    kinds, costs, seqs = [], {}, []
    for i, (event, data) in enumerate(events):
        if data == "[DONE]":
            kinds.append("[DONE]")
            continue
        ev = typed(case, components.ResponsesStreamingResponse, json.dumps({"data": json.loads(data)}), f"event[{i}]")
        raw = json.loads(data, parse_float=Decimal)
        if event is not None and event != raw.get("type"):
            problem(case, f"event[{i}]: SSE event {event} but type {raw.get('type')}")
        kinds.append(raw.get("type"))
        if "sequence_number" not in raw:
            problem(case, f"event[{i}] {raw.get('type')}: no sequence_number")
        else:
            seqs.append(raw["sequence_number"])
        resp = raw.get("response")
        if isinstance(resp, dict) and resp.get("usage") is not None:
            costs = costs_of(resp["usage"], RESP_COST)
            if ev is not None:
                u = ev.data.response.usage
                if isinstance(u, Unset) or u is None:
                    problem(case, f"event[{i}] usage: the SDK has none")
                else:
                    sdk_usage_matches(case, u, costs, RESP_COST)
    if seqs != list(range(len(seqs))):
        problem(case, f"sequence numbers are not 0, 1, 2, …: {seqs}")
    if expect == "usage":
        for k in RESP_EVENTS_REQUIRED:
            if k not in kinds:
                problem(case, f"no {k} event")
        require_costs(case, costs, True)
        if kinds and kinds[-1] != "[DONE]":
            problem(case, "the stream does not end with data: [DONE]")
    elif expect == "abort":
        if "response.completed" in kinds or not cut:
            problem(case, f"an aborted stream must be cut before response.completed (cut={cut})")
    elif expect == "error":
        if "response.failed" not in kinds:
            problem(case, "no response.failed event")
        if "response.completed" in kinds:
            problem(case, "a failed stream must not complete")
    save(out_dir, case, "responses_stream", text, gid, costs, {"expect": expect})


def generation_raw(out_dir, name, base, gid, expect_usage=None):
    case = f"generation-{name}"
    r = httpx.get(f"{base}/generation", params={"id": gid}, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    if r.status_code != 200:
        problem(case, f"HTTP {r.status_code}: {r.text[:200]}")
        return None
    typed(case, components.GenerationResponse, r.text)
    raw = json.loads(r.text, parse_float=Decimal)["data"]
    costs = {k: (None if raw.get(k) is None else str(raw.get(k))) for k in ("total_cost", "usage", "upstream_inference_cost")}
    save(out_dir, case, "generation", r.text, gid, costs)
    return raw


def sdk_cases(cfg):
    """The same endpoints through the SDKs' own calls (helpers, streams)."""
    base = cfg["plain"]
    sdk = openrouter.OpenRouter(api_key=KEY, server_url=base, retry_config=NO_RETRY)
    case = "sdk-chat"
    try:
        res = sdk.chat.send(model=CHAT_BODY["model"], messages=CHAT_BODY["messages"], max_tokens=16)
        walk_typed(case, res, "$")
        if res.usage is None or res.usage.cost is None or isinstance(res.usage.cost_details, Unset) or res.usage.cost_details is None:
            problem(case, f"usage cost or cost_details missing: {res.usage!r}")
    except Exception as e:
        problem(case, f"{type(e).__name__}: {str(e)[:400]}")
    case = "sdk-chat-stream"
    try:
        saw_usage, n = False, 0
        for chunk in sdk.chat.send(model=CHAT_BODY["model"], messages=CHAT_BODY["messages"], max_tokens=16, stream=True):
            n += 1
            walk_typed(case, chunk, f"chunk[{n}]")
            if chunk.usage is not None:
                saw_usage = chunk.usage.cost is not None and not isinstance(chunk.usage.cost_details, Unset)
        if not saw_usage:
            problem(case, "no usage with cost and cost_details")
    except Exception as e:
        problem(case, f"{type(e).__name__}: {str(e)[:400]}")
    case = "sdk-responses"
    try:
        res = sdk.beta.responses.send(model=RESP_BODY["model"], input=RESP_BODY["input"], max_output_tokens=16)
        walk_typed(case, res, "$")
        if isinstance(res.usage, Unset) or res.usage is None or res.usage.cost is None or res.usage.cost_details is None:
            problem(case, f"usage cost or cost_details missing: {res.usage!r}")
    except Exception as e:
        problem(case, f"{type(e).__name__}: {str(e)[:400]}")
    case = "sdk-responses-stream"
    try:
        kinds = []
        for ev in sdk.beta.responses.send(model=RESP_BODY["model"], input=RESP_BODY["input"], max_output_tokens=16, stream=True):
            ev = getattr(ev, "data", ev)
            walk_typed(case, ev, f"event[{len(kinds)}]")
            kinds.append(getattr(ev, "type", "?"))
        for k in RESP_EVENTS_REQUIRED:
            if k not in kinds:
                problem(case, f"no {k} event: {kinds}")
    except Exception as e:
        problem(case, f"{type(e).__name__}: {str(e)[:400]}")
    case = "sdk-models"
    try:
        page = sdk.models.list(limit=2)
        seen = []
        while page is not None:
            walk_typed(case, page.result, "$")
            seen += [m.id for m in page.result.data]
            page = page.next()
        if len(seen) != len(set(seen)) or len(seen) < 3:
            problem(case, f"pagination went wrong: {seen}")
        total = sdk.models.list().result.total_count
        if total != len(seen):
            problem(case, f"total_count {total} but {len(seen)} models listed")
        user = sdk.models.list_for_user(security=operations.ListModelsUserSecurity(bearer=KEY))
        walk_typed(case, user.result, "$user")
    except Exception as e:
        problem(case, f"{type(e).__name__}: {str(e)[:400]}")
    case = "sdk-key"
    try:
        k = sdk.api_keys.get_current_key_metadata()
        walk_typed(case, k, "$")
    except Exception as e:
        problem(case, f"{type(e).__name__}: {str(e)[:400]}")
    case = "sdk-generation"
    try:
        r = raw_post(base, "/chat/completions", CHAT_BODY)
        g = sdk.generations.get_generation(id=r.headers["x-generation-id"])
        walk_typed(case, g, "$")
    except Exception as e:
        problem(case, f"{type(e).__name__}: {str(e)[:400]}")

    # Errors OpenRouter declares: each must come back as its typed error.
    for name, cls in [
        ("e402", errors.PaymentRequiredResponseError),
        ("e502", errors.BadGatewayResponseError),
        ("e524", errors.EdgeNetworkTimeoutResponseError),
        ("e529", errors.ProviderOverloadedResponseError),
    ]:
        case = f"sdk-{name}"
        s = openrouter.OpenRouter(api_key=KEY, server_url=cfg[name], retry_config=NO_RETRY)
        for call in ("chat", "responses"):
            try:
                if call == "chat":
                    s.chat.send(model=CHAT_BODY["model"], messages=CHAT_BODY["messages"])
                else:
                    s.beta.responses.send(model=RESP_BODY["model"], input=RESP_BODY["input"])
                problem(case, f"{call}: no error raised")
            except cls as e:
                if not e.data.error.message:
                    problem(case, f"{call}: empty message")
            except Exception as e:
                problem(case, f"{call}: {type(e).__name__} instead of {cls.__name__}: {str(e)[:300]}")

    # The openai SDK and its streaming helpers.
    oa = openai.OpenAI(api_key=KEY, base_url=base, max_retries=0)
    case = "openai-chat"
    try:
        c = oa.chat.completions.create(model=CHAT_BODY["model"], messages=CHAT_BODY["messages"], max_tokens=16)
        extra = c.usage.model_extra or {}
        if extra.get("cost") is None or not extra.get("cost_details"):
            problem(case, f"usage.cost / cost_details not visible: {c.usage!r}")
    except Exception as e:
        problem(case, f"{type(e).__name__}: {str(e)[:400]}")
    case = "openai-chat-stream-helper"
    try:
        # No max_tokens: the helper refuses a final message cut by the length limit.
        with oa.chat.completions.stream(model=CHAT_BODY["model"], messages=CHAT_BODY["messages"]) as st:
            for _ in st:
                pass
            final = st.get_final_completion()
        if not final.choices[0].message.content:
            problem(case, "empty final message")
    except Exception as e:
        problem(case, f"{type(e).__name__}: {str(e)[:400]}")
    case = "openai-responses"
    try:
        r = oa.responses.create(model=RESP_BODY["model"], input=RESP_BODY["input"], max_output_tokens=16)
        if not r.output_text:
            problem(case, "no output_text")
    except Exception as e:
        problem(case, f"{type(e).__name__}: {str(e)[:400]}")
    case = "openai-responses-stream-helper"
    try:
        with oa.responses.stream(model=RESP_BODY["model"], input=RESP_BODY["input"], max_output_tokens=16) as st:
            kinds = [ev.type for ev in st]
            final = st.get_final_response()
        if not final.output_text or final.usage is None:
            problem(case, f"final response without text or usage: {final!r}"[:400])
        if (final.usage.model_extra or {}).get("cost") is None:
            problem(case, "final usage has no cost")
    except Exception as e:
        problem(case, f"{type(e).__name__}: {str(e)[:400]}")
    case = "openai-mid-stream-error"
    oe = openai.OpenAI(api_key=KEY, base_url=cfg["mid_stream"], max_retries=0)
    try:
        for _ in oe.chat.completions.create(model=CHAT_BODY["model"], messages=CHAT_BODY["messages"], stream=True):
            pass
        problem(case, "chat: a mid-stream error raised nothing")
    except openai.APIError as e:
        if not str(e):
            problem(case, "chat: APIError without message")
    except Exception as e:
        problem(case, f"chat: {type(e).__name__} instead of APIError: {str(e)[:300]}")
    try:
        with oe.responses.stream(model=RESP_BODY["model"], input=RESP_BODY["input"]) as st:
            kinds = [ev.type for ev in st]
        if "response.failed" not in kinds:
            problem(case, f"responses: no response.failed event: {kinds}")
    except Exception as e:
        problem(case, f"responses: {type(e).__name__}: {str(e)[:300]}")


def error_raw(out_dir, name, base):
    case = f"error-{name}"
    types = {
        "e402": errors.PaymentRequiredResponseErrorData,
        "e502": errors.BadGatewayResponseErrorData,
        "e524": errors.EdgeNetworkTimeoutResponseErrorData,
        "e529": errors.ProviderOverloadedResponseErrorData,
    }
    for path, body in (("/chat/completions", CHAT_BODY), ("/responses", RESP_BODY)):
        r = raw_post(base, path, body)
        want = int(name[1:])
        if r.status_code != want:
            problem(case, f"{path}: HTTP {r.status_code}, expected {want}")
            continue
        typed(case, types[name], r.text)
        save(out_dir, case, "error", r.text, None, {}, {"status": want, "path": path})


def main():
    global KEY
    cfg = json.load(open(sys.argv[1]))
    KEY = cfg.pop("key", KEY)
    out_dir = sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    for name in ("plain", "byok"):
        chat_raw(out_dir, name, cfg[name])
        chat_stream_raw(out_dir, name, cfg[name])
        responses_raw(out_dir, name, cfg[name])
        responses_stream_raw(out_dir, name, cfg[name])
    chat_raw(out_dir, "missing_cost", cfg["missing_cost"], expect_cost=False)
    responses_raw(out_dir, "missing_cost", cfg["missing_cost"], expect_cost=False)
    chat_stream_raw(out_dir, "abort", cfg["abort"], expect="abort")
    responses_stream_raw(out_dir, "abort", cfg["abort"], expect="abort")
    chat_stream_raw(out_dir, "mid_stream", cfg["mid_stream"], expect="error")
    responses_stream_raw(out_dir, "mid_stream", cfg["mid_stream"], expect="error")
    # Generation statistics of everything served above, once ready.
    for entry in list(REPORT):
        if entry["generation_id"] and entry["kind"] != "generation":
            base = cfg[entry["case"].rsplit("-", 1)[1]]
            generation_raw(out_dir, entry["case"], base, entry["generation_id"])
    for name in ("plain",):
        r = httpx.get(f"{cfg[name]}/models", timeout=30)
        typed("models", components.ModelsListResponse, r.text)
        save(out_dir, "models", "models", r.text, None, {})
        r = httpx.get(f"{cfg[name]}/models/user", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        typed("models-user", components.ModelsListResponse, r.text)
        save(out_dir, "models-user", "models", r.text, None, {})
        r = httpx.get(f"{cfg[name]}/key", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        typed("key", operations.GetCurrentKeyResponse, r.text)
        save(out_dir, "key", "key", r.text, None, {})
    for name in ("e402", "e502", "e524", "e529"):
        error_raw(out_dir, name, cfg[name])
    sdk_cases(cfg)
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump({"entries": REPORT, "problems": PROBLEMS}, f, indent=1)
    for p in PROBLEMS:
        print(f"PROBLEM {p}")
    print(f"sdk_check: openrouter {openrouter_version()}, openai {openai.__version__}: "
          f"{len(REPORT)} replies checked, {len(PROBLEMS)} problems")
    return 1 if PROBLEMS else 0


def openrouter_version():
    try:
        from openrouter import _version
        return _version.__version__
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
