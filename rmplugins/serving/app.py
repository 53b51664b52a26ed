"""The reward server's HTTP app: routes, authentication, the access log and ``/metrics``.

A reward goes one way down: ``POST /get_reward`` -> :func:`get_reward` -> :meth:`RewardService.handle` ->
``RequestParser.openrlhf_samples`` (a worker thread) -> ``Batcher.submit`` -> ``RewardScorer`` (the scoring thread,
batched with other requests) -> ``rm.score_rows`` / ``rm.compare_rows`` -> the family's model call on its backend.
A model on vLLM (``engine="vllm"``) takes ``PassThrough.submit`` instead of the batcher: each request in its own
thread, batched by vLLM's scheduler. With ``--group-size`` a group-relative family's samples wait in the
``GroupBuffer`` for their group, which then goes the same way as one ``GroupJob`` (``rm.rank_rows``).

Routes: OpenRLHF's ``/get_reward``, the separated ``/score``, vLLM's ``/classify`` and ``/pooling``
(:mod:`.vllm_api`), slime's ``/remote_rm`` (a bare number), ``/health``, ``/metrics`` (Prometheus) and
``/metrics.json``.

The route handlers are plain functions; what they share (model, parser, batcher, metrics, key) is the app's
:class:`RewardService` (``app.state.service``), built by :func:`create_app`.
"""

# No `from __future__ import annotations`: FastAPI resolves the handlers' `Request` annotation at registration.
import asyncio
import hmac
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from ..finite import NON_FINITE, NonFiniteOutput
from ..options import real_number
from ..policy_template import PolicyTemplate, load_policy_template
from .batcher import Batcher
from .groups import ClientGone, GroupBuffer
from .metrics import Metrics, prometheus_text
from .passthrough import PassThrough
from .protocol import PAIRWISE_HELP, REJECTED, RequestError, RequestParser, parse_body, refusal_kind
from .scorer import RewardScorer, rejection
from .vllm_api import VLLMRequests, error_body

logger = logging.getLogger("rmplugins.server")
access_logger = logging.getLogger("rmplugins.server.access")
PARSE_THREADS = 4
UNAUTHORIZED = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
FALLBACK_HINT = (" (a client that can take no reward sends \"partial\": true; for one that cannot, start the server "
                 "with --fallback-reward X to answer such a sample with the reward X)")


def parse_and_cost(body: bytes, parse):
    """(samples, the route's options, their own cost, their prompts' costs by prompt) for the batcher's token
    budget, in which a prompt several requests bring (a rollout's n samples) counts once. ``parse`` returns the
    samples, or (samples, options) for a route whose answer depends on the request (vLLM's ``use_activation``)."""
    parsed = parse_body(body, parse)
    samples, options = parsed if isinstance(parsed, tuple) else (parsed, {})
    return samples, options, sum(s.cost() for s in samples), {s.prompt_key(): s.prompt_cost() for s in samples}


ON_VLLM = "the model runs on vLLM, whose own prefix caching keeps prompts (vLLM's enable_prefix_caching)"
DETERMINISTIC = "the model is deterministic (each row alone: nothing may depend on earlier requests)"


def refuse_prompt_cache(tokens: int | None, reason: str | None) -> None:
    """A prompt cache asked for where ``reason`` says none can run: an error rather than a silent no-op."""
    if reason and tokens:
        raise ValueError(f"--prompt-cache-tokens {tokens}: {reason}; leave it unset or 0")


def prompt_cache_engine(rm: Any, tokens: int | None):
    """The engine whose prompt cache the server runs, or None: none for a deterministic model (a row's numbers
    must not depend on what ran before it), a backend that keeps prompts itself (vLLM) or one without causal prefix
    reuse (PairRM's DeBERTa). Asking for one there is an error rather than a silent no-op."""
    if tokens is not None and int(tokens) < 0:
        raise ValueError(f"prompt_cache_tokens must be 0 (off) or more, got {tokens}")
    backend = rm.backend
    reason = None
    if backend.name == "vllm":
        reason = ON_VLLM
    elif not backend.supports_prompt_cache:
        reason = f"this {rm.kind!r} model has no causal prefix reuse to cache (PairRM's encoder; a hybrid: Qwen3.5)"
    elif rm.deterministic:
        reason = DETERMINISTIC
    refuse_prompt_cache(tokens, reason)
    return None if reason else backend


def check_fallback_reward(value: Any) -> float | None:
    """``--fallback-reward``: a finite number (the reward of a sample the model rejects, for clients that cannot
    take a missing one), or None (such a sample is refused: 422, or null in a partial answer)."""
    return None if value is None else real_number(
        "--fallback-reward", value, " (the reward given to a sample the model rejects), or left unset so that such "
        "a sample is refused with its reason")


def _policy_template(policy_tokenizer: Any) -> PolicyTemplate | None:
    if isinstance(policy_tokenizer, (str, os.PathLike)):
        return load_policy_template(str(policy_tokenizer))
    if policy_tokenizer is not None and not isinstance(policy_tokenizer, PolicyTemplate):
        return PolicyTemplate(policy_tokenizer)
    return policy_tokenizer


class RewardService:
    """What every request needs: the model, the request parser, the batcher (or vLLM's pass-through), the
    metrics, the API key and the limits. ``prompt_cache_tokens``: the engine's prompt cache while the app runs
    (None: a tenth of free memory; 0: off; always off for a deterministic model). ``fallback_reward``: the reward
    of a sample the model rejects (a judge without a verdict, a prompt too long to read whole, a lone sample whose
    group never completed), flagged ``no_reward`` = 1 in ``extra_logs``, for every client but one that asks for a
    ``partial`` answer (which gets null); None: such a sample is refused (422, or 408 for the lone sample)."""

    def __init__(self, rm: Any, *, policy_tokenizer: Any = None, api_key: str | None = None, max_batch_size: int = 64,
                 max_batch_tokens: int = 32768, max_wait_ms: float = 5.0, max_request_samples: int = 256,
                 max_body_bytes: int = 8 << 20, max_queue_samples: int = 8192, request_timeout: float = 120.0,
                 objective_logs: bool = False, max_sample_chars: int | None = None,
                 prompt_cache_tokens: int | None = None, group_size: int | None = None,
                 group_timeout: float = 120.0, group_method: str | None = None,
                 fallback_reward: float | None = None):
        if api_key is not None and not str(api_key).strip():
            raise ValueError("api_key is empty: pass a real key, or None for no authentication")
        grouped = check_group_options(rm, group_size, group_method)
        self.fallback_reward = check_fallback_reward(fallback_reward)
        self.rm = rm
        self.template = _policy_template(policy_tokenizer)
        self.engine = prompt_cache_engine(rm, prompt_cache_tokens)
        self.prompt_cache_tokens = prompt_cache_tokens
        self.metrics = Metrics()
        self.scorer = RewardScorer(rm, objective_logs, groups=grouped, fallback=self.fallback_reward is not None)
        if rm.backend.name == "vllm":  # vLLM's scheduler batches; an offline LLM takes one call at a time
            concurrent = rm.backend.concurrent
            self.batcher = PassThrough(self.scorer, max_concurrent=256 if concurrent else 1,
                                       max_queue_items=max_queue_samples, metrics=self.metrics)
            logger.info("scoring on vLLM: %s", "requests go to its scheduler as they come" if concurrent else
                        "an offline vLLM engine takes one request at a time (load with asynchronous=True, as "
                        "`rmplugins serve --engine vllm` does, to let vLLM batch across requests)")
        else:
            self.batcher = Batcher(self.scorer, max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
                                   max_wait_ms=max_wait_ms, max_queue_items=max_queue_samples, metrics=self.metrics)
        self.requests = RequestParser(kind=self.scorer.kind, needs_reference=self.scorer.needs_reference,
                                      max_length=rm.max_length, metrics=self.metrics, policy_template=self.template,
                                      max_samples=max_request_samples, max_sample_chars=max_sample_chars)
        self.key = str(api_key).encode("utf-8") if api_key else None
        self.max_body_bytes = int(max_body_bytes)
        self.request_timeout = float(request_timeout)
        self.model_name = _public_name(rm.name_or_path)
        self.vllm = VLLMRequests(self.requests, getattr(rm, "tokenizer", None), self.model_name)
        self.groups = None
        if grouped:
            # round robin by default: every response against every other, in both orders (no bracket, no order)
            method = group_method or ("round_robin" if "round_robin" in rm.rank_methods else rm.rank_methods[0])
            self.groups = GroupBuffer(self.batcher, size=group_size, timeout=group_timeout, method=method,
                                      metrics=self.metrics, request_timeout=self.request_timeout,
                                      max_waiting=max_queue_samples)
            logger.info("group rewards: each sample waits for the %d samples of its group (keyed by group id, else "
                        "by prompt), up to %g s (--group-timeout); ranked with %r", group_size, group_timeout, method)
        self._parsing = ThreadPoolExecutor(max_workers=PARSE_THREADS, thread_name_prefix="rmplugins-parse")
        if self.scorer.needs_reference:
            logger.info("reward model kind %r %s", self.scorer.kind, PAIRWISE_HELP)

    @asynccontextmanager
    async def lifespan(self, app):
        engine = self.engine
        before = engine.prompt_cache_tokens if engine is not None else 0
        if engine is not None:
            tokens = self.prompt_cache_tokens
            engine.prompt_cache_tokens = engine.auto_prompt_cache_tokens() if tokens is None else tokens
            logger.info("prompt cache: up to %d tokens (--prompt-cache-tokens)", engine.prompt_cache_tokens)
        await self.batcher.start()
        yield
        if self.groups is not None:
            await self.groups.stop()
        await self.batcher.stop()
        self._parsing.shutdown(wait=False, cancel_futures=True)
        if engine is not None:  # the model may outlive the app (tests, notebooks): leave it as it was
            engine.prompt_cache_tokens = before

    def stopping(self) -> None:
        """The server stops taking requests: the samples waiting for their groups are answered now (503), since no
        more samples can arrive; what is being scored finishes."""
        if self.groups is not None:
            waiting = self.groups.waiting_samples
            if waiting:
                logger.warning("stopping: %d samples waiting for incomplete groups are answered 503 (their groups "
                               "can no longer complete)", waiting)
            self.groups.release_waiting()

    def authorized(self, request: Request) -> bool:
        """``Authorization: Bearer KEY``; the scheme is case-insensitive (RFC 7235) and the key is compared as
        UTF-8 bytes (the server sees header bytes as latin-1 text)."""
        if self.key is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        try:
            given_bytes = given.strip().encode("latin-1")
        except UnicodeEncodeError:
            return False
        return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, self.key)

    def fail(self, request: Request, started: float, status: int, reason: str, shape=None,
             kind: str | None = None, fault: str | None = None) -> JSONResponse:
        """An error answer: ``{"error": reason, "status": status}`` (and ``"kind"`` where a sample was refused:
        :mod:`rmplugins.refusals`; ``"fault"`` where the model failed in a way no retry changes: ``non_finite``),
        or the route's own error shape (vLLM's)."""
        self.metrics.error(status)
        if kind is not None:
            self.metrics.refused(kind)
        access(request, status, started, reason)
        body = shape(status, reason) if shape is not None else {"error": reason, "status": status}
        if shape is None:
            body.update({name: v for name, v in (("kind", kind), ("fault", fault)) if v is not None})
        return JSONResponse(body, status_code=status)

    async def read_body(self, request: Request) -> bytes:
        headers = request.headers
        if "transfer-encoding" in headers and "content-length" in headers:
            raise RequestError(400, "both Content-Length and Transfer-Encoding were sent; send one")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json" and not content_type.endswith("+json"):
            raise RequestError(415, f"Content-Type must be application/json, got {content_type or 'none'!r}")
        declared = headers.get("content-length")
        limit = self.max_body_bytes
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes (--max-body-bytes)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(413, f"body exceeds the limit of {limit} bytes (--max-body-bytes)")
        return bytes(body)

    async def handle(self, request: Request, parse, answer=None, error_shape=None) -> JSONResponse:
        """Authenticate, read, parse (in a worker thread: a huge or deeply nested body does not stall the event
        loop), score with the other requests (or wait for the group), answer; every failure is an answer with a
        status and a reason. ``answer(results, options)`` builds the route's body (default: OpenRLHF's)."""
        started = time.perf_counter()
        metrics = self.metrics
        metrics.requests += 1
        if not self.authorized(request):
            return self.fail(request, started, 401, UNAUTHORIZED, error_shape)
        try:
            body = await self.read_body(request)
            samples, options, cost, shared = await asyncio.get_running_loop().run_in_executor(
                self._parsing, parse_and_cost, body, parse)
            metrics.samples += len(samples)
            partial = options.get("partial", False)
            fallback = self.fallback_reward is not None and not partial
            if self.groups is not None:
                results = await self.groups.submit(samples, request.is_disconnected, partial=partial or fallback)
            else:  # a sample the model refuses comes back as a 422 (protocol.refusal), a bug here as a 500
                results = await self.batcher.submit(samples, cost, self.request_timeout, shared=shared,
                                                    partial=partial or fallback)
            rejected = [r for r in results if isinstance(r, BaseException)]  # null, or given the fallback reward
            if rejected and fallback:
                results = [self.scorer.fallback(r, self.fallback_reward, s) if isinstance(r, BaseException) else r
                           for r, s in zip(results, samples)]
            content = answer(results, options) if answer is not None else self.scorer.answer(results)
            reply = JSONResponse(content)  # refuses NaN/inf: reported below, not a bare 500
        except RequestError as err:
            reason = err.reason + (FALLBACK_HINT if err.reason.startswith(REJECTED) else "")
            return self.fail(request, started, err.status, reason, error_shape, err.kind)
        except (ClientDisconnect, ClientGone) as err:
            metrics.disconnects += 1
            access(request, 499, started, "client disconnected before sending the whole body"
                   if isinstance(err, ClientDisconnect) else "client disconnected while its group was waiting")
            return JSONResponse({"error": "client disconnected"}, status_code=400)
        except NonFiniteOutput as err:  # the model's forward, not the request: the same on every retry
            logger.error("model fault: %s", err)
            return self.fail(request, started, 500, f"model fault: NonFiniteOutput: {err}", error_shape,
                             fault=NON_FINITE)
        except Exception as err:  # noqa: BLE001 - never let one request take the server down
            logger.exception("unexpected error")
            return self.fail(request, started, 500, f"internal error: {type(err).__name__}: {err}", error_shape)
        metrics.answered(time.perf_counter() - started)
        metrics.rejected += len(rejected)
        metrics.fallback_rewards += len(rejected) if fallback else 0
        for err in rejected:
            metrics.refused(refusal_kind(err))
        given = f", given --fallback-reward {self.fallback_reward:g}" if fallback else ""
        access(request, 200, started, f"{len(samples)} sample(s)"
               + (f", {len(rejected)} rejected ({refusal_kind(rejected[0])}: {rejection(rejected[0])}){given}"
                  if rejected else ""))
        return reply


def check_group_options(rm: Any, group_size: int | None, group_method: str | None) -> bool:
    """Whether requests are grouped: ``group_size`` for a group-relative family; a pointwise family ignores it
    (logged). A ranking method the family lacks is an error before anything is served."""
    if group_size is None:
        if group_method is not None:
            raise ValueError("--group-method applies with --group-size (group rewards); add --group-size N")
        return False
    if rm.pointwise:
        logger.info("--group-size %s: kind %r gives each response its own reward; every request is scored as it "
                    "comes (group rewards are for gpm, pair_pm, pairrm and pairwise judges)", group_size, rm.kind)
        return False
    if group_method is not None and group_method not in rm.rank_methods:
        raise ValueError(f"--group-method {group_method}: kind {rm.kind!r} ranks a group with one of "
                         f"{list(rm.rank_methods)}")
    return True


# ------------------------------------------------------------------------------------------------ routes
async def get_reward(request: Request):
    """OpenRLHF's protocol: {"query", "prompts", "labels"} -> {"rewards", "scores", "extra_logs"}."""
    service: RewardService = request.app.state.service
    return await service.handle(request, service.requests.openrlhf_samples)


async def score(request: Request):
    """Separated inputs: {"prompts", "completions", "references"?} -> same answer shape."""
    service: RewardService = request.app.state.service
    return await service.handle(request, service.requests.direct_samples)


async def classify(request: Request):
    """vLLM's ``/classify``: {"input" | "messages", "use_activation"} -> ``ClassificationResponse``;
    ``data[i].probs[-1]`` is the reward."""
    service: RewardService = request.app.state.service
    return await service.handle(request, service.vllm.classify, service.vllm.answer, error_body)


async def pooling(request: Request):
    """vLLM's ``/pooling``: -> ``PoolingResponse``; ``data[i].data`` is the reward and the family's per-row values."""
    service: RewardService = request.app.state.service
    return await service.handle(request, service.vllm.pooling, service.vllm.answer, error_body)


async def remote_rm(request: Request):
    """slime's ``--rm-type remote_rm``: {"prompt", "response", "label"} -> the reward, a bare JSON number."""
    service: RewardService = request.app.state.service
    return await service.handle(request, service.requests.slime_samples, lambda results, _: results[0]["score"])


async def health(request: Request):
    service: RewardService = request.app.state.service
    return {"status": "ok", "kind": service.scorer.kind, "model": service.model_name,
            "policy_template": service.template is not None, "needs_reference": service.scorer.needs_reference,
            "deterministic": bool(service.rm.deterministic), "extra_logs": service.scorer.log_keys,
            "group_size": service.groups.size if service.groups is not None else None,
            "fallback_reward": service.fallback_reward}


async def metrics(request: Request):
    """Prometheus' text format (scrape it)."""
    service: RewardService = request.app.state.service
    if not service.authorized(request):
        return service.fail(request, time.perf_counter(), 401, UNAUTHORIZED)
    body, content_type = prometheus_text(service)
    return Response(body, media_type=content_type)


async def metrics_json(request: Request):
    """The same numbers as one JSON object (and recent batch sizes, latency percentiles)."""
    service: RewardService = request.app.state.service
    if not service.authorized(request):
        return service.fail(request, time.perf_counter(), 401, UNAUTHORIZED)
    groups = len(service.groups.waiting) if service.groups is not None else None
    # tokens through the backbone, the floor of each batch, the prompt cache (rmplugins' engine); a judge's verdicts
    return {**service.metrics.snapshot(service.batcher.queued, groups), **service.rm.backend.metrics(),
            **service.rm.metrics()}


def create_app(rm: Any, **options):
    """The FastAPI app around a loaded reward model; ``options`` are :class:`RewardService`'s
    (``policy_tokenizer`` is a tokenizer, a path, or a :class:`~rmplugins.policy_template.PolicyTemplate`;
    ``None`` selects the plain mode)."""
    service = RewardService(rm, **options)
    # No /docs, /redoc or /openapi.json: they would be open to anyone who can reach a keyed server.
    app = FastAPI(title="rmplugins reward server", lifespan=service.lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.service = service
    app.state.requests, app.state.scorer = service.requests, service.scorer
    app.state.metrics, app.state.batcher = service.metrics, service.batcher
    app.add_api_route("/get_reward", get_reward, methods=["POST"])
    app.add_api_route("/score", score, methods=["POST"])
    app.add_api_route("/classify", classify, methods=["POST"])
    app.add_api_route("/pooling", pooling, methods=["POST"])
    app.add_api_route("/remote_rm", remote_rm, methods=["POST"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/metrics.json", metrics_json, methods=["GET"])
    return app


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
