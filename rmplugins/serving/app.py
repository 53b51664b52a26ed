"""The reward server's HTTP app: routes, authentication, the access log and ``/metrics``, wiring the request
parser (:mod:`.protocol`), the batcher (:mod:`.batcher`) and the reward logic (:mod:`.scorer`).

A reward goes one way down: ``POST /get_reward`` -> ``handle`` -> ``RequestParser.openrlhf_samples`` (a worker
thread) -> ``Batcher.submit`` -> ``RewardScorer`` (the scoring thread, batched with other requests) ->
``rm.score`` / ``rm.compare`` -> the engine. A model on vLLM (``engine="vllm"``) takes ``PassThrough.submit``
instead: each request in its own thread, batched by vLLM's scheduler.
"""

# No `from __future__ import annotations`: FastAPI must resolve the handlers' `Request` annotation, which is
# imported inside create_app so that fastapi stays an optional extra.
import asyncio
import hmac
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from .batcher import Batcher
from .metrics import Metrics
from .passthrough import PassThrough
from .protocol import PAIRWISE_HELP, RequestError, RequestParser, parse_body
from .scorer import RewardScorer

logger = logging.getLogger("rmplugins.server")
access_logger = logging.getLogger("rmplugins.server.access")
PARSE_THREADS = 4
UNAUTHORIZED = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"


def parse_and_cost(body: bytes, parse):
    """(samples, their own cost, their prompts' costs by prompt) for the batcher's token budget, in which a prompt
    several requests bring (a rollout's n samples) counts once."""
    samples = parse_body(body, parse)
    return samples, sum(s.cost() for s in samples), {s.prompt_key(): s.prompt_cost() for s in samples}


def prompt_cache_engine(rm: Any, tokens: int | None):
    """The engine whose prompt cache the server runs, or None: none for a deterministic model (a row's numbers
    must not depend on what ran before it) or one without causal prefix reuse (PairRM's DeBERTa). Asking for one
    there is an error rather than a silent no-op."""
    engine = getattr(rm, "engine", None)
    if tokens is not None and int(tokens) < 0:
        raise ValueError(f"prompt_cache_tokens must be 0 (off) or more, got {tokens}")
    reason = None
    if getattr(rm, "backend", None) == "vllm":
        reason = "the model runs on vLLM, whose own prefix caching keeps prompts (vLLM's enable_prefix_caching)"
    elif engine is None or not getattr(engine, "prefix_reuse", False):
        reason = f"a {getattr(rm, 'kind', '?')!r} model has no causal prefix reuse to cache"
    elif getattr(rm, "deterministic", False):
        reason = "the model is deterministic (each row alone: nothing may depend on earlier requests)"
    if reason:
        if tokens:
            raise ValueError(f"--prompt-cache-tokens {tokens}: {reason}; leave it unset or 0")
        return None
    return engine


def create_app(rm: Any, *, policy_tokenizer: Any = None, api_key: str | None = None, max_batch_size: int = 64,
               max_batch_tokens: int = 32768, max_wait_ms: float = 5.0, max_request_samples: int = 256,
               max_body_bytes: int = 8 << 20, max_queue_samples: int = 8192, request_timeout: float = 120.0,
               objective_logs: bool = False, max_sample_chars: int | None = None,
               prompt_cache_tokens: int | None = None):
    """The FastAPI app around a loaded reward model. ``policy_tokenizer`` is a tokenizer, a path, or a
    :class:`~rmplugins.policy_template.PolicyTemplate`; ``None`` selects the plain mode. ``prompt_cache_tokens``:
    the engine's prompt cache while the app runs (None: a tenth of free memory; 0: off; always off for a
    deterministic model), so rollout samples of one prompt landing in different batches run the prompt once."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.requests import ClientDisconnect

    from ..policy_template import PolicyTemplate, load_policy_template

    template = policy_tokenizer
    if isinstance(policy_tokenizer, (str, os.PathLike)):
        template = load_policy_template(str(policy_tokenizer))
    elif policy_tokenizer is not None and not isinstance(policy_tokenizer, PolicyTemplate):
        template = PolicyTemplate(policy_tokenizer)
    if api_key is not None and not str(api_key).strip():
        raise ValueError("api_key is empty: pass a real key, or None for no authentication")
    engine = prompt_cache_engine(rm, prompt_cache_tokens)
    metrics = Metrics()
    scorer = RewardScorer(rm, objective_logs)
    if getattr(rm, "backend", None) == "vllm":  # vLLM's scheduler batches; an offline LLM takes one call at a time
        concurrent = getattr(rm.vllm, "concurrent", False)
        batcher = PassThrough(scorer, max_concurrent=256 if concurrent else 1, max_queue_items=max_queue_samples,
                              metrics=metrics)
        logger.info("scoring on vLLM: %s", "requests go to its scheduler as they come" if concurrent else
                    "an offline vLLM engine takes one request at a time (load with asynchronous=True, as "
                    "`rmplugins serve --engine vllm` does, to let vLLM batch across requests)")
    else:
        batcher = Batcher(scorer, max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
                          max_wait_ms=max_wait_ms, max_queue_items=max_queue_samples, metrics=metrics)
    requests = RequestParser(kind=scorer.kind, needs_reference=scorer.needs_reference,
                             max_length=getattr(rm, "max_length", None), metrics=metrics, policy_template=template,
                             max_samples=max_request_samples, max_sample_chars=max_sample_chars)
    key = str(api_key).encode("utf-8") if api_key else None
    parsing = ThreadPoolExecutor(max_workers=PARSE_THREADS, thread_name_prefix="rmplugins-parse")
    if scorer.needs_reference:
        logger.info("reward model kind %r %s", scorer.kind, PAIRWISE_HELP)

    @asynccontextmanager
    async def lifespan(app):
        before = engine.prompt_cache_tokens if engine is not None else 0
        if engine is not None:
            engine.prompt_cache_tokens = (engine.auto_prompt_cache_tokens() if prompt_cache_tokens is None
                                          else prompt_cache_tokens)
            logger.info("prompt cache: up to %d tokens (--prompt-cache-tokens)", engine.prompt_cache_tokens)
        await batcher.start()
        yield
        await batcher.stop()
        parsing.shutdown(wait=False, cancel_futures=True)
        if engine is not None:  # the model may outlive the app (tests, notebooks): leave it as it was
            engine.prompt_cache_tokens = before

    # No /docs, /redoc or /openapi.json: they would be open to anyone who can reach a keyed server.
    app = FastAPI(title="rmplugins reward server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.requests, app.state.scorer, app.state.metrics, app.state.batcher = requests, scorer, metrics, batcher

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
            return fail(request, started, 401, UNAUTHORIZED)
        try:
            body = await read_body(request)
            # JSON decoding, validation and the template split run in worker threads: a huge or deeply nested
            # body does not stall the event loop (health checks, other clients).
            samples, cost, shared = await asyncio.get_running_loop().run_in_executor(parsing, parse_and_cost, body,
                                                                                    parse)
            metrics.samples += len(samples)
            try:
                results = await batcher.submit(samples, cost, request_timeout, shared=shared)
            except (ValueError, TypeError) as err:  # the model could not score one of this request's samples
                raise RequestError(422, f"the reward model rejected this sample: {err}") from None
            answer = JSONResponse(scorer.answer(results))  # refuses NaN/inf: reported below, not a bare 500
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
        return await handle(request, requests.openrlhf_samples)

    @app.post("/score")
    async def score(request: Request):
        """Separated inputs: {"prompts", "completions", "references"?} -> same answer shape."""
        return await handle(request, requests.direct_samples)

    model_name = _public_name(getattr(rm, "name_or_path", None))

    @app.get("/health")
    async def health():
        return {"status": "ok", "kind": scorer.kind, "model": model_name,
                "policy_template": template is not None, "needs_reference": scorer.needs_reference,
                "deterministic": bool(getattr(rm, "deterministic", False)), "extra_logs": scorer.log_keys}

    @app.get("/metrics")
    async def get_metrics(request: Request):
        if not authorized(request):
            return fail(request, time.perf_counter(), 401, UNAUTHORIZED)
        snapshot = metrics.snapshot(batcher.queued)
        if getattr(rm, "engine", None) is not None:  # tokens through the backbone, the floor of each batch
            snapshot["engine"] = rm.engine.stats.as_dict()
            snapshot["prompt_cache"] = rm.engine.prompt_cache_info()
        return snapshot

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
