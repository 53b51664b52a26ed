"""TRL reward functions that ask ``rmplugins serve`` (OpenRLHF's protocol), so the reward model lives on other
GPUs or hosts: :class:`AsyncRemoteRewardFunction` (the reward) and :class:`RemoteObjectives` (ArmoRM's objectives as
separate reward functions, for GRPOConfig's ``reward_weights`` and ``multi_objective_aggregation``).

Both pickle (TRL's async GRPO runs reward functions in a spawned rollout process without a GPU) and keep one aiohttp
session per event loop. A refused request (401/403/4xx) or a server never reached raises; a server that fails after
answering before gives None for the rows it lost (TRL: no advantage), with a warning. Each row carries a sample id,
stable across retries, so a server with ``--group-size`` never counts a retried sample twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import uuid
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..finite import NON_FINITE
from ..options import whole_number
from ..refusals import KINDS, REJECTED
from .shaping import _BaseRewardFunction, _response_text, _sanitize, _unique_name, none_by_kind

logger = logging.getLogger("rmplugins.trl")


class RemoteRewardError(RuntimeError):
    """The reward server refused the request (401/403/4xx) or was never reachable: raised, not turned into None."""


class ServerError(RuntimeError):
    """The server answered with an error a retry may clear (5xx, 408, 429): it was reached."""


def _fault(text: str) -> str | None:
    """The ``fault`` of an rmplugins server's error body (``non_finite``: its model's forward gave NaN), if any."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    return body.get("fault") if isinstance(body, dict) else None


def _raise_for_status(url: str, status: int, text: str) -> None:
    """Raise for an error answer: RemoteRewardError where retrying cannot help (refused, or the server's model
    failed for good), else ServerError (retried)."""
    if _fault(text) == NON_FINITE:
        raise RemoteRewardError(f"the reward model behind {url} failed ({status}; every retry would too): "
                                f"{text[:1000]}")
    text = text[:300]
    if status in (401, 403):
        raise RemoteRewardError(f"reward server {url} answered {status} (API key missing or wrong): pass "
                                f"api_key= the key the server was started with (--api-key); server said: {text}")
    if 400 <= status < 500 and status not in (408, 429):
        raise RemoteRewardError(f"reward server {url} refused the request ({status}): {text}")
    raise ServerError(f"HTTP {status}: {text}")


async def _close_with_loop(session):
    """An async generator the loop finalizes at shutdown (``asyncio.run`` calls ``shutdown_asyncgens``), closing
    the loop's session with it instead of leaving an unclosed-session warning behind."""
    try:
        yield
    finally:
        await session.close()


UNANSWERED = "unanswered"  # none_frac/unanswered: rows of a request that failed after the server had answered before


def _per_row(values: Any, n: int) -> list:
    """A partial answer's per-row list (``errors``, ``error_kinds``), or Nones where it is missing or malformed."""
    return values if isinstance(values, list) and len(values) == n else [None] * n


# the reward server's other routes (other frameworks' protocols): a URL naming one is a mistake, not a base URL
OTHER_ROUTES = ("score", "classify", "pooling", "remote_rm", "health", "metrics", "metrics.json")


class AsyncRemoteRewardFunction(_BaseRewardFunction):
    """An async TRL reward function that asks a remote reward server (``rmplugins serve``, OpenRLHF protocol).

    GRPO/RLOO run async reward functions in a background event loop, so scoring overlaps with other rewards and
    the reward model lives on other GPUs or hosts; TRL's async GRPO runs it in its rollout process. The batch is
    sent in chunks of ``batch_size`` rows, in parallel; a chunk that still fails after ``retries`` gives None (TRL:
    NaN, no advantage) with a warning, and so does a row the reward model rejects (a judge without a verdict: the
    request asks for ``partial`` answers, so the chunk's other rows keep their rewards).

    ``policy_tokenizer`` (a path or tokenizer): render conversational prompts with the policy's chat template,
    for a server started with ``--policy-tokenizer`` (it recovers the whole conversation). Without it the
    server gets the last user message as the prompt text.
    """

    def __init__(self, url: str, *, name: str | None = None, api_key: str | None = None, batch_size: int = 32,
                 timeout: float = 180.0, retries: int = 3, policy_tokenizer: Any = None, normalize: bool = False,
                 clip: float | tuple[float, float] | None = None, length_penalty: float = 0.0):
        super().__init__(normalize=normalize, clip=clip, length_penalty=length_penalty)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http(s) URL of the reward server, got {url!r}")
        route = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
        if route in OTHER_ROUTES:
            raise ValueError(f"url {url!r} names the server's /{route} route; this client speaks OpenRLHF's "
                             "/get_reward: pass the server's address (http://HOST:PORT) or its /get_reward URL")
        url = url.rstrip("/")
        if not url.endswith("/get_reward"):
            url += "/get_reward"
        batch_size, retries = whole_number("batch_size", batch_size, 1), whole_number("retries", retries, 0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a number of seconds above 0, got {timeout!r}")
        self.url = url
        self.api_key = api_key
        self.batch_size = batch_size
        self.timeout = float(timeout)
        self.retries = retries
        # a path is kept as a path (loaded where the function runs: a spawned process pickles less)
        self.policy_tokenizer = str(policy_tokenizer) if isinstance(policy_tokenizer, os.PathLike) else \
            policy_tokenizer
        host = url.split("//", 1)[1].split("/", 1)[0]
        self.__name__ = name or _unique_name(f"remote_{_sanitize(host)}")
        self._warned_context = False
        self._reached = False  # until the server first answers, an unreachable server is an error, not a None
        self._sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> (session, keeper)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_sessions"] = None  # sessions belong to their event loop, never to a pickle
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._sessions = weakref.WeakKeyDictionary()

    def _tokenizer(self):
        if isinstance(self.policy_tokenizer, str):
            from transformers import AutoTokenizer

            self.policy_tokenizer = AutoTokenizer.from_pretrained(self.policy_tokenizer)
        return self.policy_tokenizer

    def _texts(self, prompt: Any, completion: Any) -> tuple[str, str]:
        response = _response_text(completion)
        if isinstance(prompt, str):
            return prompt + response, prompt
        if self.policy_tokenizer is not None:
            text = self._tokenizer().apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
            return text + response, text
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if len(prompt) > 1 and not self._warned_context:
            logger.warning("%s: without policy_tokenizer only the last user message is sent as the prompt; pass "
                           "policy_tokenizer= (and start the server with --policy-tokenizer) to keep the "
                           "conversation", self.__name__)
            self._warned_context = True
        text = users[-1] if users and isinstance(users[-1], str) else ""
        return text + response, text

    async def _session(self):
        """This event loop's aiohttp session (one per loop: TRL's background loop keeps one for the whole run),
        or None without aiohttp (each request then runs in a worker thread)."""
        try:
            import aiohttp
        except ImportError:
            return None
        loop = asyncio.get_running_loop()
        held = self._sessions.get(loop)
        if held is None or held[0].closed:
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            keeper = _close_with_loop(session)
            await keeper.__anext__()
            held = self._sessions[loop] = (session, keeper)
        return held[0]

    async def _post(self, session: Any, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                if session is not None:
                    async with session.post(self.url, json=body, headers=headers) as resp:
                        if resp.status != 200:
                            _raise_for_status(self.url, resp.status, (await resp.text())[:65536])
                        answer = await resp.json()
                else:
                    answer = await asyncio.to_thread(self._post_blocking, body, headers)
                self._reached = True
                return answer
            except RemoteRewardError:
                raise  # the server refused the request: retrying will not change that
            except Exception as err:  # noqa: BLE001 - network errors and 5xx/429 are retried
                last = err
                if attempt < self.retries:
                    await asyncio.sleep(min(0.5 * 2 ** attempt, 5.0))
        if not self._reached and isinstance(last, ServerError):  # up, but it never scored: its log says why
            raise RemoteRewardError(f"{self.__name__}: the reward server {self.url} answered every attempt "
                                    f"({self.retries + 1}) with an error and has not scored yet; its log says why. "
                                    f"Last answer: {last}")
        if not self._reached:  # never reached: a wrong URL or a server that is not up, not a passing hiccup
            raise RemoteRewardError(f"{self.__name__}: the reward server {self.url} could not be reached "
                                    f"({self.retries + 1} attempts; last error: {last}); start it (rmplugins serve) "
                                    "or fix the URL")
        raise RuntimeError(f"reward server {self.url} failed after {self.retries + 1} attempts: {last}")

    def _post_blocking(self, body: dict, headers: dict) -> dict:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            _raise_for_status(self.url, err.code, err.read(65536).decode(errors="replace"))

    async def fetch(self, prompts: Sequence[Any], completions: Sequence[Any], kwargs: dict
                    ) -> tuple[list[float | None], list[dict | None], dict[int, str], BaseException | None]:
        """(raw reward per row, the server's ``extra_logs`` per row, why each row without one has none, the last
        failure): one request per chunk of ``batch_size`` rows, in parallel. A row the model refused has the
        server's refusal kind (``error_kinds``: ``too_long``, ``no_verdict``, ...); a row of a chunk whose request
        failed is None with the kind ``unanswered``."""
        if len(prompts) != len(completions):
            raise ValueError(f"{self.__name__}: got {len(prompts)} prompts but {len(completions)} completions")
        n = len(prompts)
        labels = kwargs.get("label") or kwargs.get("labels") or kwargs.get("answer") or [""] * n
        queries, ptexts = zip(*(self._texts(p, c) for p, c in zip(prompts, completions))) if n else ((), ())
        sample_ids = [uuid.uuid4().hex for _ in range(n)]  # the same on every retry of this call
        chunks = [range(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]
        session = await self._session()
        results = await asyncio.gather(*(
            self._post(session, {"query": [queries[i] for i in ch], "prompts": [ptexts[i] for i in ch],
                                 "labels": [labels[i] if i < len(labels) else "" for i in ch],
                                 "sample_ids": [sample_ids[i] for i in ch],
                                 "partial": True})  # a row the model rejects: null with its reason, not a 422
            for ch in chunks), return_exceptions=True)
        fatal = next((r for r in results if isinstance(r, RemoteRewardError)), None)
        if fatal is not None:
            raise fatal  # training on without rewards would be silent: a wrong key, URL or request is an error
        raw: list[float | None] = [None] * n
        logs: list[dict | None] = [None] * n
        kinds: dict[int, str] = {}
        failure = None
        for ch, res in zip(chunks, results):
            values = None if isinstance(res, BaseException) else res.get("rewards", res.get("scores"))
            if isinstance(res, BaseException) or not isinstance(values, list) or len(values) != len(ch):
                failure = res if isinstance(res, BaseException) else RuntimeError(
                    f"server answered {str(res)[:200]} for {len(ch)} rows")
                kinds.update(dict.fromkeys(ch, UNANSWERED))
                continue
            extra = res.get("extra_logs") or {}
            errors, why_kind = _per_row(res.get("errors"), len(ch)), _per_row(res.get("error_kinds"), len(ch))
            for j, (i, v, why) in enumerate(zip(ch, values, errors)):
                raw[i] = None if v is None else float(v)
                if v is None:  # rejected by the model (a judge without a verdict): this row only
                    failure = failure or RuntimeError(f"the server rejected a row: {why or 'no reason given'}")
                    kinds[i] = why_kind[j] if why_kind[j] in KINDS else REJECTED
                    continue
                logs[i] = {k: vals[j] for k, vals in extra.items() if isinstance(vals, list) and j < len(vals)}
        return raw, logs, kinds, failure

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                       completion_ids: Sequence | None = None, log_metric: Callable | None = None,
                       log_extra: Callable | None = None, trainer_state: Any = None,
                       **kwargs: Any) -> list[float | None]:
        n = len(prompts)
        raw, logs, kinds, failure = await self.fetch(prompts, completions, kwargs)
        extras: dict[str, list[float]] = defaultdict(list)
        for row in logs:
            for k, v in (row or {}).items():
                if isinstance(v, (int, float)):
                    extras[k].append(float(v))
        metrics = {f"server/{k}": sum(v) / len(v) for k, v in extras.items() if v}
        valid = [r for r in raw if r is not None]
        if valid and (self.normalize or self.clip is not None or self.length_penalty):
            metrics["raw_mean"] = sum(valid) / len(valid)
        # statistics stay local: collectives do not belong in TRL's background event loop
        rewards, shaping = self._shape(raw, completions, completion_ids, reduce_stats=False)
        metrics.update(shaping)
        if failure is not None:
            missing = [i for i, r in enumerate(rewards) if r is None]
            summary, none_metrics = none_by_kind(missing, kinds, n)  # the server's refusal kinds, or unanswered
            logger.warning("%s: %d of %d rows have no reward (None: %s): %s", self.__name__, len(missing), n,
                           summary, failure)
            metrics.update(none_metrics)
        self._record(metrics, log_metric)
        return rewards


class RemoteObjectives:
    """ArmoRM's objectives as separate TRL reward functions, from one server request per sample.

    ``list(RemoteObjectives(url, ["helpsteer-helpfulness", "beavertails-is_safe"]))`` gives one async reward
    function per objective (``__name__`` ``armorm/<objective>``; ``"score"`` names ArmoRM's gated score). GRPO
    calls its async reward functions together on the same batch: the first asks the server, the others await the
    same answer. With ``GRPOConfig(multi_objective_aggregation="normalize_then_sum", reward_weights=[...])``
    (GDPO) each objective is normalised within its group before the weighted sum. The server runs ArmoRM with
    ``--objective-logs`` (its answers then carry each objective).
    """

    def __init__(self, url: str, objectives: Sequence[str], **options: Any):
        if isinstance(objectives, str) or not objectives:
            raise ValueError("objectives: a list of ArmoRM objective names (e.g. ['helpsteer-helpfulness', "
                             "'beavertails-is_safe']) or 'score'")
        if len(set(objectives)) != len(objectives):
            raise ValueError(f"objectives {list(objectives)} name one objective twice")
        shaping = sorted(set(options) & {"normalize", "clip", "length_penalty"})
        if shaping:  # each objective is returned as the server gave it: the option would do nothing, silently
            raise ValueError(f"RemoteObjectives returns each objective as the server computes it; {shaping} would "
                             "not apply. Normalise per group with GRPOConfig(multi_objective_aggregation="
                             "'normalize_then_sum'), or use AsyncRemoteRewardFunction for one shaped reward")
        self.client = AsyncRemoteRewardFunction(url, name=options.pop("name", None) or _unique_name("armorm"),
                                                **options)
        self.objectives = list(objectives)
        self.functions = [RemoteObjective(self, o) for o in self.objectives]
        self._inflight: OrderedDict = OrderedDict()

    def __iter__(self):
        return iter(self.functions)

    def __len__(self) -> int:
        return len(self.functions)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_inflight"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._inflight = OrderedDict()

    async def rows(self, prompts: Sequence[Any], completions: Sequence[Any], kwargs: dict):
        """The server's answer for this batch: fetched once however many objective functions ask for it."""
        key = (id(asyncio.get_running_loop()),
               json.dumps([[p if isinstance(p, str) else list(p) for p in prompts],
                           [_response_text(c) for c in completions]], default=str))
        entry = self._inflight.get(key)
        if entry is None:
            entry = self._inflight[key] = [asyncio.ensure_future(self.client.fetch(prompts, completions, kwargs)), 0]
            while len(self._inflight) > 8:
                self._inflight.popitem(last=False)
        entry[1] += 1
        if entry[1] >= len(self.functions):
            self._inflight.pop(key, None)
        return await asyncio.shield(entry[0])


class RemoteObjective:
    """One objective of :class:`RemoteObjectives` as an async TRL reward function."""

    def __init__(self, parent: RemoteObjectives, objective: str):
        self.parent, self.objective = parent, objective
        self.__name__ = f"{parent.client.__name__}/{objective}"

    def __repr__(self) -> str:
        return f"RemoteObjective(name={self.__name__!r})"

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        raw, logs, _, failure = await self.parent.rows(prompts, completions, kwargs)
        if self.objective == "score":
            return raw
        field = f"objective/{self.objective}"
        out: list[float | None] = []
        for row in logs:
            if row is not None and field not in row:
                raise RemoteRewardError(
                    f"{self.__name__}: the server's answer has no {field!r} (it has {sorted(row)}): serve ArmoRM "
                    "with --objective-logs, and name objectives from rm.objective_names")
            out.append(None if row is None else float(row[field]))
        if failure is not None:
            logger.warning("%s: %d of %d rows have no reward (None): %s", self.__name__,
                           sum(v is None for v in out), len(out), failure)
        return out
