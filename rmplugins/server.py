"""``rmplugins serve``: a batching reward server that speaks OpenRLHF's remote reward protocol.

OpenRLHF (0.11) rollout actors POST one sample per request, many at once, to ``--reward.remote_url``:
``{"query": [text], "prompts": [text], "labels": [label]}`` -> ``{"rewards": [x], "scores": [x],
"extra_logs": {name: [x]}}``. Their reference server scores requests one after another with the reward model's
tokenizer on the policy-templated text. Here:

- concurrent requests are collected for a few milliseconds (up to a sample count and a token budget) and scored
  in one batched call (``rm.score`` / ``rm.compare``) in a worker thread, so throughput grows with concurrency;
- with a policy tokenizer the conversation is recovered from the policy-templated text and re-rendered in the
  reward model's own format (:mod:`rmplugins.policy_template`);
- pairwise kinds (pair_pm, pairrm) and GPM score the response against a reference response carried by the label
  (reward = P(response beats reference)); without one the request gets a 422 that says so;
- ``extra_logs`` has the same keys in every response (OpenRLHF stacks them per step and fails otherwise);
- it binds 127.0.0.1 by default, takes an optional bearer key, limits body size, samples per request and queue
  length, and answers every request (bad input -> 4xx with a reason, timeout -> 504) without going down.

``POST /score`` takes already-separated ``prompts``/``completions``/``references`` (used by the verl client).
"""

# No `from __future__ import annotations`: FastAPI must resolve the handlers' `Request` annotation, which is
# imported inside create_app so that fastapi stays an optional extra.
import asyncio
import hmac
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from .inputs import split_sizes, text_of

logger = logging.getLogger("rmplugins.server")
access_logger = logging.getLogger("rmplugins.server.access")
PARSE_THREADS = 4

API_KEY_ENV = "RMPLUGINS_API_KEY"
PAIRWISE_HELP = ("judges pairs of responses and has no reward for a lone response: put a reference response in "
                 "the label (a plain string, or JSON {\"reference\": \"...\"}); the reward is then "
                 "P(response beats reference)")


class RequestError(Exception):
    """An answer with an HTTP status and a reason for the client."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Sample:
    """One thing to score: prompt messages, the response, and (pairwise kinds) the reference response."""

    messages: list[dict]
    response: str
    reference: str | None = None
    recovered: float = 1.0  # 1 when the conversation was recovered with the policy template, else 0

    def cost(self) -> int:
        """Rough token count (4 characters a token), for the batch token budget; counting exactly would cost a
        tokenizer pass in the event loop."""
        chars = sum(len(m.get("content") or "") for m in self.messages) + len(self.response)
        return (2 * chars if self.reference is not None else chars) // 4 + 8


@dataclass
class _Pending:
    samples: list[Sample]
    future: asyncio.Future
    cost: int = 0


@dataclass
class Metrics:
    started: float = field(default_factory=time.time)
    requests: int = 0
    samples: int = 0
    errors: dict = field(default_factory=dict)
    batches: int = 0
    batched_samples: int = 0
    max_batch: int = 0
    disconnects: int = 0        # clients gone before sending their whole body (not server errors)
    fallbacks: int = 0          # scored as plain text although a policy template was given
    template_refused: int = 0   # chat-templated text no template could recover: refused (422)
    template_builtin: dict = field(default_factory=dict)  # recovered with a built-in template, by name
    latencies: deque = field(default_factory=lambda: deque(maxlen=20000))
    batch_sizes: deque = field(default_factory=lambda: deque(maxlen=2000))
    model_seconds: float = 0.0

    def error(self, status: int) -> None:
        self.errors[str(status)] = self.errors.get(str(status), 0) + 1

    def snapshot(self, queue_samples: int) -> dict:
        lat = sorted(self.latencies)

        def pct(q):
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 3) if lat else None

        return {
            "uptime_s": round(time.time() - self.started, 1),
            "requests": self.requests, "samples": self.samples, "errors": dict(self.errors),
            "batches": self.batches,
            "mean_batch_size": round(self.batched_samples / self.batches, 3) if self.batches else None,
            "max_batch_size": self.max_batch,
            "recent_batch_sizes": list(self.batch_sizes)[-20:],
            "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "window": len(lat)},
            "model_seconds": round(self.model_seconds, 3),
            "queue_samples": queue_samples,
            "client_disconnects": self.disconnects,
            "template_fallbacks": self.fallbacks,
            "template_refused": self.template_refused,
            "template_builtin": dict(self.template_builtin),
        }


class Batcher:
    """Collects concurrent requests and scores them together.

    The first waiting request opens a batch; more are taken for up to ``max_wait_ms`` (only when the previous
    batch held several requests, so a lone client never waits) or until ``max_batch_size`` samples or
    ``max_batch_tokens`` (estimated) are reached. One batch runs at a time in a worker thread, so
    requests that arrive meanwhile form the next batch. ``max_batch_size=1`` gives the one-at-a-time path.
    """

    def __init__(self, rm: Any, *, max_batch_size: int = 64, max_batch_tokens: int = 32768,
                 max_wait_ms: float = 5.0, max_queue_samples: int = 8192, objective_logs: bool = False,
                 metrics: Metrics | None = None):
        self.rm = rm
        self.pointwise = bool(getattr(rm, "pointwise", False))
        if int(max_batch_size) < 1 or int(max_batch_tokens) < 1 or float(max_wait_ms) < 0 or int(max_queue_samples) < 1:
            raise ValueError("max_batch_size, max_batch_tokens and max_queue_samples must be at least 1, and "
                             "max_wait_ms at least 0")
        self.max_batch_size = int(max_batch_size)
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_wait = float(max_wait_ms) / 1000
        self.max_queue_samples = int(max_queue_samples)
        self.metrics = metrics or Metrics()
        self.objective_names: list[str] = []
        if objective_logs and getattr(rm, "kind", "") == "armorm":
            self.objective_names = list(getattr(rm, "objective_names", None) or [])
        self.log_keys = ["rm_score", "template_recovered"] + [f"objective/{n}" for n in self.objective_names]
        self._queue: asyncio.Queue | None = None
        self._queued_samples = 0
        self._task: asyncio.Task | None = None
        self._carry: _Pending | None = None
        self._last_batch_requests = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rmplugins-score")

    @property
    def queued_samples(self) -> int:
        return self._queued_samples

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="rmplugins-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, samples: list[Sample], timeout: float | None) -> list[dict]:
        if self._queue is None:
            raise RequestError(503, "the scoring queue is not running yet; retry in a moment")
        if self._queued_samples + len(samples) > self.max_queue_samples:
            raise RequestError(503, f"server overloaded: {self._queued_samples} samples already queued "
                                    f"(limit {self.max_queue_samples}); retry later or add servers")
        future = asyncio.get_running_loop().create_future()
        self._queued_samples += len(samples)
        await self._queue.put(_Pending(samples, future, sum(s.cost() for s in samples)))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            future.cancel()
            raise RequestError(504, f"scoring did not finish within the per-request timeout of {timeout:g} s "
                                    "(server busy or a very long sample); retry or raise --request-timeout")

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first, self._carry = (self._carry or await self._queue.get()), None
            batch, size, tokens = [first], len(first.samples), first.cost
            # Wait for company only under load (the last batch held several requests): a lone client is served
            # at once; under load, requests that arrive while a batch runs form the next one anyway.
            deadline = loop.time() + (self.max_wait if self._last_batch_requests > 1 else 0.0)
            while size < self.max_batch_size and tokens < self.max_batch_tokens:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                if size + len(item.samples) > self.max_batch_size:
                    self._carry = item  # it opens the next batch
                    break
                batch.append(item)
                size += len(item.samples)
                tokens += item.cost
            for item in batch:
                self._queued_samples -= len(item.samples)
            self._last_batch_requests = len(batch)
            live = [item for item in batch if not item.future.done()]  # drop requests that timed out
            if not live:
                continue
            started = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run, live)
            except Exception as err:  # noqa: BLE001 - keep the loop alive whatever happens
                logger.exception("scoring batch failed")
                outcomes = [RequestError(500, f"scoring failed: {type(err).__name__}: {err}")] * len(live)
            m = self.metrics
            m.model_seconds += time.perf_counter() - started
            n = sum(len(item.samples) for item in live)
            m.batches += 1
            m.batched_samples += n
            m.max_batch = max(m.max_batch, n)
            m.batch_sizes.append(n)
            for item, outcome in zip(live, outcomes):
                if item.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)

    # ------------------------------------------------------------------ worker thread
    def _run(self, batch: list[_Pending]) -> list:
        """One outcome per request. A batch that raises is cut in halves and each half retried, so a failing
        request is found in O(log n) calls and the others are scored in a few large calls, never one by one."""
        if len(batch) == 1:
            return [self._alone(batch[0])]
        samples = [s for item in batch for s in item.samples]
        try:
            results = self._compute(samples)
        except Exception:  # noqa: BLE001 - which request caused it is found by bisection
            half = len(batch) // 2
            return self._run(batch[:half]) + self._run(batch[half:])
        return split_sizes(results, [len(item.samples) for item in batch])

    def _alone(self, item: _Pending):
        try:
            return self._compute(item.samples)
        except (ValueError, TypeError) as err:
            return RequestError(422, f"the reward model rejected this sample: {err}")
        except Exception as err:  # noqa: BLE001 - reported to the client, the server keeps going
            logger.exception("scoring failed")
            return RequestError(500, f"scoring failed: {type(err).__name__}: {err}")

    def _compute(self, samples: list[Sample]) -> list[dict]:
        prompts = [s.messages for s in samples]
        responses = [s.response for s in samples]
        objectives = None
        if self.pointwise:
            if self.objective_names:
                details = self.rm.score_details(prompts, responses)
                get = details.get if isinstance(details, dict) else lambda k: getattr(details, k)
                scores = [float(x) for x in _tolist(get("score"))]
                objectives = _tolist(get("rewards"))
            else:
                scores = [float(x) for x in self.rm.score(prompts, responses)]
        else:
            scores = [float(x) for x in self.rm.compare(prompts, responses, [s.reference for s in samples])]
        out = []
        for i, (s, score) in enumerate(zip(samples, scores)):
            logs = {"rm_score": score, "template_recovered": s.recovered}
            if objectives is not None:
                logs.update({f"objective/{n}": float(v) for n, v in zip(self.objective_names, objectives[i])})
            out.append({"score": score, "logs": logs})
        return out


def _tolist(x):
    return x.tolist() if hasattr(x, "tolist") else list(x)


# ---------------------------------------------------------------------------------------------- request parsing
def reference_from_label(label: Any) -> str | None:
    """A reference response from an OpenRLHF label: a non-empty string, or JSON/dict with ``reference``
    (also ``response`` or ``chosen``). Anything else (``""``, numbers, ``None``) means no reference."""
    if isinstance(label, str):
        text = label.strip()
        if text.startswith("{"):
            try:
                label = json.loads(text)
            except json.JSONDecodeError:
                return label
        else:
            return label if text else None
    if isinstance(label, dict):
        for key in ("reference", "response", "chosen"):
            value = label.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, list) and value and isinstance(value[-1], dict):  # [{"role": "assistant", ...}]
                return str(value[-1].get("content") or "")
    return None


def _list_field(data: dict, name: str, n: int | None, required: bool) -> list | None:
    value = data.get(name)
    if value is None:
        if required:
            raise RequestError(422, f"field {name!r} is missing: send a list with one entry per sample")
        return None
    if isinstance(value, str) and name in ("query", "prompts"):
        value = [value]
    if not isinstance(value, list):
        raise RequestError(422, f"field {name!r} must be a list, got {type(value).__name__}")
    if n is not None and len(value) != n:
        raise RequestError(422, f"field {name!r} has {len(value)} entries but 'query' has {n}: send one per sample")
    return value


class RewardService:
    """Turns request bodies into samples (recovering conversations) and samples into OpenRLHF responses."""

    def __init__(self, rm: Any, batcher: Batcher, policy_template: Any = None, max_samples: int = 256,
                 request_timeout: float = 120.0, max_sample_chars: int | None = None):
        self.rm, self.batcher, self.template = rm, batcher, policy_template
        self.kind = getattr(rm, "kind", "?")
        self.max_samples = max_samples
        self.max_sample_chars = max_sample_chars or default_sample_chars(rm)
        self.request_timeout = request_timeout
        self._warned_fallback = False
        self._warned_builtin: set[str] = set()

    def _reference(self, label: Any, index: int) -> str | None:
        if self.batcher.pointwise:
            return None
        reference = reference_from_label(label)
        if reference is None:
            raise RequestError(422, f"sample {index}: reward model kind {self.kind!r} {PAIRWISE_HELP}; "
                                    f"got label {label!r:.80}")
        return reference

    def _split(self, query: str, prompt: str | None, index: int) -> Sample:
        from .policy_template import TemplateMismatch, split_without_tokenizer

        metrics = self.batcher.metrics
        if self.template is not None:
            try:
                messages, response = self.template.split(query, prompt)
                return Sample(messages, response, recovered=1.0)
            except TemplateMismatch as err:
                if not self._warned_fallback:
                    logger.warning("sample %d: could not recover the conversation with the policy template (%s); "
                                   "trying the plain mode and the built-in templates (logged once; counted in "
                                   "/metrics template_fallbacks)", index, err)
                    self._warned_fallback = True
        try:
            messages, response, builtin = split_without_tokenizer(query, prompt)
        except TemplateMismatch as err:
            metrics.template_refused += 1
            raise RequestError(422, f"sample {index}: {err}") from None
        if builtin is None:
            metrics.fallbacks += self.template is not None  # plain text although a policy template was given
            return Sample(messages, response, recovered=0.0)
        metrics.template_builtin[builtin] = metrics.template_builtin.get(builtin, 0) + 1
        if builtin not in self._warned_builtin:
            logger.warning("recovering chat-templated requests with the built-in %r template (no --policy-tokenizer "
                           "given, or it did not match); pass --policy-tokenizer for the policy's exact template "
                           "(logged once; counted in /metrics template_builtin)", builtin)
            self._warned_builtin.add(builtin)
        return Sample(messages, response, recovered=1.0)

    def openrlhf_samples(self, data: Any) -> list[Sample]:
        if not isinstance(data, dict):
            raise RequestError(422, "the body must be a JSON object {\"query\": [...], \"prompts\": [...], "
                                    "\"labels\": [...]}")
        queries = _list_field(data, "query", None, True)
        if not queries:
            raise RequestError(422, "field 'query' is empty: send at least one sample")
        self._check_count(len(queries))
        prompts = _list_field(data, "prompts", len(queries), False)
        labels = _list_field(data, "labels", len(queries), False) or [""] * len(queries)
        samples = []
        for i, query in enumerate(queries):
            prompt = prompts[i] if prompts is not None else None
            if not isinstance(query, str) or (prompt is not None and not isinstance(prompt, str)):
                raise RequestError(422, f"sample {i}: 'query' and 'prompts' entries must be strings")
            label = labels[i]
            self._check_size(len(query) + (len(label) if isinstance(label, str) else 0), i)
            try:
                text_of(query, f"sample {i}")
            except ValueError as err:
                raise RequestError(422, str(err)) from None
            sample = self._split(query, prompt, i)
            sample.reference = self._reference(labels[i], i)
            samples.append(sample)
        return samples

    def direct_samples(self, data: Any) -> list[Sample]:
        """``/score``: ``{"prompts": [str | messages], "completions": [str], "references": [str | null]}``."""
        from .inputs import completion_messages, prompt_messages

        if not isinstance(data, dict):
            raise RequestError(422, "the body must be a JSON object {\"prompts\": [...], \"completions\": [...]}")
        prompts = _list_field(data, "prompts", None, True)
        if not prompts:
            raise RequestError(422, "field 'prompts' is empty: send at least one sample")
        self._check_count(len(prompts))
        completions = data.get("completions")
        if not isinstance(completions, list) or len(completions) != len(prompts):
            raise RequestError(422, "field 'completions' must be a list with one entry per prompt")
        references = data.get("references") or [None] * len(prompts)
        if not isinstance(references, list) or len(references) != len(prompts):
            raise RequestError(422, "field 'references' must be a list with one entry per prompt")
        samples = []
        for i, (p, c, r) in enumerate(zip(prompts, completions, references)):
            try:
                messages = prompt_messages(p, i)
                answer = completion_messages(c, i)
            except ValueError as err:
                raise RequestError(422, str(err)) from None
            sample = Sample(messages + answer[:-1], answer[-1]["content"])
            sample.reference = self._reference(r if r is not None else "", i)
            self._check_size(sum(len(m["content"]) for m in sample.messages) + len(sample.response)
                             + len(sample.reference or ""), i)
            samples.append(sample)
        return samples

    def _check_size(self, chars: int, index: int) -> None:
        """Tokenizing a text costs its length even though the model reads only ``max_length`` tokens of it: one
        multi-megabyte sample would hold the scoring thread for seconds and starve every other client."""
        if chars > self.max_sample_chars:
            raise RequestError(413, f"sample {index} has {chars} characters; the limit is {self.max_sample_chars} "
                                    f"(--max-sample-chars): the reward model reads at most "
                                    f"{getattr(self.rm, 'max_length', '?')} tokens of it")

    def _check_count(self, n: int) -> None:
        if n > self.max_samples:
            raise RequestError(413, f"{n} samples in one request; the limit is {self.max_samples} "
                                    "(--max-request-samples): split the request")

    async def score(self, samples: list[Sample]) -> dict:
        results = await self.batcher.submit(samples, self.request_timeout)
        scores = [r["score"] for r in results]
        return {"rewards": scores, "scores": list(scores),
                "extra_logs": {k: [r["logs"][k] for r in results] for k in self.batcher.log_keys}}


# ---------------------------------------------------------------------------------------------- the app
def create_app(rm: Any, *, policy_tokenizer: Any = None, api_key: str | None = None, max_batch_size: int = 64,
               max_batch_tokens: int = 32768, max_wait_ms: float = 5.0, max_request_samples: int = 256,
               max_body_bytes: int = 8 << 20, max_queue_samples: int = 8192, request_timeout: float = 120.0,
               objective_logs: bool = False, max_sample_chars: int | None = None):
    """The FastAPI app around a loaded reward model. ``policy_tokenizer`` is a tokenizer, a path, or a
    :class:`~rmplugins.policy_template.PolicyTemplate`; ``None`` selects the plain mode."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.requests import ClientDisconnect

    from .policy_template import PolicyTemplate, load_policy_template

    template = policy_tokenizer
    if isinstance(policy_tokenizer, (str, os.PathLike)):
        template = load_policy_template(str(policy_tokenizer))
    elif policy_tokenizer is not None and not isinstance(policy_tokenizer, PolicyTemplate):
        template = PolicyTemplate(policy_tokenizer)
    if api_key is not None and not str(api_key).strip():
        raise ValueError("api_key is empty: pass a real key, or None for no authentication")
    metrics = Metrics()
    batcher = Batcher(rm, max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms,
                      max_queue_samples=max_queue_samples, objective_logs=objective_logs, metrics=metrics)
    service = RewardService(rm, batcher, template, max_request_samples, request_timeout, max_sample_chars)
    key = str(api_key).encode("utf-8") if api_key else None
    parser = ThreadPoolExecutor(max_workers=PARSE_THREADS, thread_name_prefix="rmplugins-parse")
    if not batcher.pointwise:
        logger.info("reward model kind %r %s", service.kind, PAIRWISE_HELP)

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()
        parser.shutdown(wait=False, cancel_futures=True)

    # No /docs, /redoc or /openapi.json: they would be open to anyone who can reach a keyed server.
    app = FastAPI(title="rmplugins reward server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.service, app.state.metrics, app.state.batcher = service, metrics, batcher

    def fail(request: Request, started: float, status: int, reason: str) -> JSONResponse:
        metrics.error(status)
        access(request, status, started, reason)
        return JSONResponse({"error": reason, "status": status}, status_code=status)

    def authorized(request: Request) -> bool:
        """``Authorization: Bearer KEY``; the scheme is case-insensitive (RFC 7235) and the key is compared as
        UTF-8 bytes (the server sees header bytes as latin-1 text)."""
        if key is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        try:
            given_bytes = given.strip().encode("latin-1")
        except UnicodeEncodeError:
            return False
        return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, key)

    async def read_body(request: Request) -> bytes:
        headers = request.headers
        if "transfer-encoding" in headers and "content-length" in headers:
            raise RequestError(400, "both Content-Length and Transfer-Encoding were sent; send one")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json" and not content_type.endswith("+json"):
            raise RequestError(415, f"Content-Type must be application/json, got {content_type or 'none'!r}")
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            raise RequestError(413, f"body of {declared} bytes exceeds the limit of {max_body_bytes} bytes "
                                    "(--max-body-bytes)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise RequestError(413, f"body exceeds the limit of {max_body_bytes} bytes (--max-body-bytes)")
        return bytes(body)

    async def handle(request: Request, parse) -> JSONResponse:
        started = time.perf_counter()
        metrics.requests += 1
        if not authorized(request):
            return fail(request, started, 401, "missing or wrong API key: send the header 'Authorization: Bearer "
                                               "<key>'")
        try:
            body = await read_body(request)
            # JSON decoding, validation and the template split run in worker threads: a huge or deeply nested
            # body does not stall the event loop (health checks, other clients).
            samples = await asyncio.get_running_loop().run_in_executor(parser, parse_body, body, parse)
            metrics.samples += len(samples)
            result = await service.score(samples)
            answer = JSONResponse(result)  # refuses NaN/inf: reported below instead of a bare 500
        except RequestError as err:
            return fail(request, started, err.status, err.reason)
        except ClientDisconnect:
            metrics.disconnects += 1
            access(request, 499, started, "client disconnected before sending the whole body")
            return JSONResponse({"error": "client disconnected"}, status_code=400)
        except Exception as err:  # noqa: BLE001 - never let one request take the server down
            logger.exception("unexpected error")
            return fail(request, started, 500, f"internal error: {type(err).__name__}: {err}")
        metrics.latencies.append(time.perf_counter() - started)
        access(request, 200, started, f"{len(samples)} sample(s)")
        return answer

    @app.post("/get_reward")
    async def get_reward(request: Request):
        """OpenRLHF's protocol: {"query", "prompts", "labels"} -> {"rewards", "scores", "extra_logs"}."""
        return await handle(request, service.openrlhf_samples)

    @app.post("/score")
    async def score(request: Request):
        """Separated inputs: {"prompts", "completions", "references"?} -> same answer shape."""
        return await handle(request, service.direct_samples)

    model_name = _public_name(getattr(rm, "name_or_path", None))

    @app.get("/health")
    async def health():
        return {"status": "ok", "kind": service.kind, "model": model_name,
                "policy_template": template is not None, "needs_reference": not batcher.pointwise,
                "deterministic": bool(getattr(rm, "deterministic", False)), "extra_logs": batcher.log_keys}

    @app.get("/metrics")
    async def get_metrics(request: Request):
        if not authorized(request):
            return fail(request, time.perf_counter(), 401, "missing or wrong API key: send the header "
                                                           "'Authorization: Bearer <key>'")
        return metrics.snapshot(batcher.queued_samples)

    return app


def default_sample_chars(rm: Any) -> int:
    """64 characters per token the model reads (text averages about 4): far above any sample the model can
    score in full, small enough that tokenizing it takes milliseconds."""
    return max(65536, 64 * int(getattr(rm, "max_length", 4096) or 4096))


def parse_body(body: bytes, parse) -> list["Sample"]:
    """JSON -> samples, with every malformed body a 4xx (never a 500): invalid UTF-8 or JSON, nesting deeper than
    Python's parser takes, numbers longer than Python converts."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON: {err}") from None
    except RecursionError:
        raise RequestError(400, "the body's JSON is nested too deeply") from None
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        raise RequestError(400, f"the body's JSON has a value Python cannot read: {err}") from None
    return parse(data)


def _public_name(name: Any) -> str | None:
    """A model name fit to show anyone: a hub id as is, a local path by its directory name only."""
    if name is None:
        return None
    text = str(name)
    return os.path.basename(text.rstrip("/")) if os.path.isabs(text) or os.path.exists(text) else text


def access(request: Any, status: int, started: float, reason: str = "") -> None:
    """One access-log line per request: client, method, path, status, latency, reason."""
    client = request.client.host if getattr(request, "client", None) else "-"
    access_logger.info("%s %s %s %d %.1fms %s", client, request.method, request.url.path, status,
                       (time.perf_counter() - started) * 1000, reason[:200])


def guarded_protocol(read_timeout: float = 30.0, max_connections: int = 1024):
    """uvicorn's h11 protocol with the two limits uvicorn lacks. A connection must finish sending its request
    (head and body) within ``read_timeout`` seconds of connecting or of its previous response, else it is closed:
    idle and 1-byte-per-second clients cannot hold sockets. Connections beyond ``max_connections`` are closed at
    once, so file descriptors stay free for the clients already served."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                logger.warning("connection from %s refused: %d open connections (--max-connections %d)",
                               self.client, len(self.connections) - 1, max_connections)
                transport.close()
                return
            self._arm_read_deadline()

        def _arm_read_deadline(self):
            self._read_deadline = self.loop.call_later(read_timeout, self._read_deadline_passed)

        def _read_deadline_passed(self):
            if self.conn.their_state not in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED) and not self.transport.is_closing():
                access_logger.info("%s - - 408 closed: request not received within %gs (--read-timeout)",
                                   self.client[0] if self.client else "-", read_timeout)
                self.transport.close()

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing():
                self._read_deadline.cancel()
                self._arm_read_deadline()

        def connection_lost(self, exc):
            deadline = getattr(self, "_read_deadline", None)
            if deadline is not None:
                deadline.cancel()
            super().connection_lost(exc)

    return GuardedH11Protocol


def uvicorn_config(app, *, host: str, port: int, read_timeout: float = 30.0, max_connections: int = 1024,
                   log_level: str = "warning"):
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5, backlog=4096,
                          http=guarded_protocol(read_timeout, max_connections), access_log=False)


def bind(host: str, port: int):
    """A listening socket on ``host:port``, or a ValueError that says what to do (port busy, bad address)."""
    import socket

    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port} is not a TCP port (0-65535)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}; "
                         f"{'another process holds the port: pick another --port' if port else 'check --host'}"
                         ) from None
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


class BackgroundServer:
    """Run an app with uvicorn in a daemon thread (tests, benchmarks, notebooks)::

        with BackgroundServer(app, port=0) as server:
            requests.post(server.url + "/get_reward", ...)
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 read_timeout: float = 30.0, max_connections: int = 1024):
        import uvicorn

        self.socket = bind(host, port)
        self.host, self.port = host, self.socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app, host=host, port=self.port, read_timeout=read_timeout,
                                                    max_connections=max_connections, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True,
                                       name="rmplugins-server")

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError(f"the reward server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


# ---------------------------------------------------------------------------------------------- CLI
def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def register(subparsers) -> None:
    from .cli import HelpFormatter, non_negative_float, positive_float, positive_int

    p = subparsers.add_parser(
        "serve", help="OpenRLHF remote reward server (POST /get_reward) with dynamic batching",
        description="Serve a reward model over HTTP in OpenRLHF's remote reward protocol: POST /get_reward "
                    "{query, prompts, labels} -> {rewards, scores, extra_logs}; GET /health; GET /metrics. "
                    "Concurrent one-sample requests are batched together. Point OpenRLHF at it with "
                    "--reward.remote_url http://HOST:PORT/get_reward (or, with --api-key, at "
                    "integrations/openrlhf/reward_func.py).",
        formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="reward model path or hub id (any supported family)")
    p.add_argument("--kind", default=None, choices=("bt", "armorm", "pair_pm", "pairrm", "gpm"),
                   help="family; default: detected from the checkpoint (an RLHFlow pair-preference model saved "
                        "locally without rmplugins.json needs --kind pair_pm: its files look like any LM)")
    p.add_argument("--variant", default=None, choices=("pairrm", "better"),
                   help="PairRM only: 'pairrm' or 'better' (Better-PairRM); default: from the checkpoint's "
                        "rmplugins.json or its hub id")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="bfloat16, float16 or float32 (default: the family's)")
    p.add_argument("--deterministic", action="store_true",
                   help="score every sample alone, so its reward is bit for bit the same however requests are "
                        "batched (costs one forward per sample; without it a reward may move by float rounding, "
                        "within 5e-5 x (1 + |reward|) in float32: README, Scoring determinism)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind; 127.0.0.1 keeps it local. Use 0.0.0.0 only with --api-key")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--api-key", default=None,  # not the env value: --help would print the secret
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set). OpenRLHF's "
                        "built-in HTTP client sends no header: use integrations/openrlhf/reward_func.py with a key")
    p.add_argument("--policy-tokenizer", default=None,
                   help="the policy's tokenizer (path or hub id): recover the conversation from the "
                        "policy-templated text and re-render it in the reward model's format. Without it "
                        "prompts[i] is the user's text and the rest of query[i] the response")
    p.add_argument("--max-batch-size", type=positive_int, default=64,
                   help="most samples scored in one batch; 1 = score requests one at a time")
    p.add_argument("--max-batch-tokens", type=positive_int, default=32768, help="token budget of one batch (estimated)")
    p.add_argument("--max-wait-ms", type=non_negative_float, default=5.0,
                   help="how long the first request of a batch waits for others")
    p.add_argument("--max-request-samples", type=positive_int, default=256,
                   help="most samples in one request (413 above)")
    p.add_argument("--max-body-bytes", type=positive_int, default=8 << 20, help="largest request body (413 above)")
    p.add_argument("--max-sample-chars", type=positive_int, default=None,
                   help="longest sample (prompt, response and reference, in characters; 413 above); default: 64 x "
                        "the reward model's max_length, far more than it reads")
    p.add_argument("--max-queue-samples", type=positive_int, default=8192, help="most samples waiting (503 above)")
    p.add_argument("--request-timeout", type=positive_float, default=120.0,
                   help="seconds a request may wait for its score (504 after; OpenRLHF's client waits 180)")
    p.add_argument("--read-timeout", type=positive_float, default=30.0,
                   help="seconds a connection has to send its whole request (from connecting or from its previous "
                        "response); slower or idle connections are closed")
    p.add_argument("--max-connections", type=positive_int, default=1024,
                   help="open connections beyond this are closed at once (keep it below `ulimit -n`)")
    p.add_argument("--objective-logs", action="store_true",
                   help="ArmoRM: add the 19 objective rewards to extra_logs (objective/<name>)")
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    import uvicorn

    from . import load_reward_model

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if api_key is not None and not api_key.strip():
        print("rmplugins serve: the API key is empty (--api-key '' or an empty $RMPLUGINS_API_KEY): give a real "
              "key, or leave both unset to serve without authentication", file=sys.stderr)
        return 2
    if not _is_loopback(args.host) and not api_key:
        logger.warning("binding %s without --api-key: anyone who can reach this port can use the reward model",
                       args.host)
    try:
        sock = bind(args.host, args.port)  # before the model loads: a busy port fails in a second, not minutes
        options = {"variant": args.variant} if args.variant else {}
        rm = load_reward_model(args.model, kind=args.kind, device=args.device, dtype=args.dtype,
                               deterministic=args.deterministic, **options)
        logger.info("loaded %r", rm)
        app = create_app(rm, policy_tokenizer=args.policy_tokenizer, api_key=api_key,
                         max_batch_size=args.max_batch_size, max_batch_tokens=args.max_batch_tokens,
                         max_wait_ms=args.max_wait_ms, max_request_samples=args.max_request_samples,
                         max_body_bytes=args.max_body_bytes, max_queue_samples=args.max_queue_samples,
                         request_timeout=args.request_timeout, objective_logs=args.objective_logs,
                         max_sample_chars=args.max_sample_chars)
    except (ValueError, OSError, TypeError) as err:
        print(f"rmplugins serve: {err}", file=sys.stderr)
        return 2
    logger.info("serving on http://%s:%d/get_reward (policy template: %s, auth: %s)", args.host, args.port,
                args.policy_tokenizer or "none; chat-templated text is recovered with the built-in templates or "
                "refused", "bearer key" if api_key else "none")
    uvicorn.Server(uvicorn_config(app, host=args.host, port=args.port, read_timeout=args.read_timeout,
                                  max_connections=args.max_connections, log_level="warning")).run(sockets=[sock])
    return 0
