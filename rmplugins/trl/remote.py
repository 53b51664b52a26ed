"""``AsyncRemoteRewardFunction``: a TRL reward function that asks ``rmplugins serve`` (OpenRLHF's protocol), so
the reward model lives on other GPUs or hosts. A refused request (401/403/4xx) or a server never reached raises;
a server that fails after answering before gives None for the rows it lost (TRL: no advantage), with a warning."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from .shaping import _BaseRewardFunction, _response_text, _sanitize, _unique_name

logger = logging.getLogger("rmplugins.trl")


class RemoteRewardError(RuntimeError):
    """The reward server refused the request (401/403/4xx) or was never reachable: raised, not turned into None."""


def _raise_for_status(url: str, status: int, text: str) -> None:
    if status in (401, 403):
        raise RemoteRewardError(f"reward server {url} answered {status} (API key missing or wrong): pass "
                                f"api_key= the key the server was started with (--api-key); server said: {text}")
    if 400 <= status < 500 and status not in (408, 429):
        raise RemoteRewardError(f"reward server {url} refused the request ({status}): {text}")
    raise RuntimeError(f"HTTP {status}: {text}")


class AsyncRemoteRewardFunction(_BaseRewardFunction):
    """An async TRL reward function that asks a remote reward server (``rmplugins serve``, OpenRLHF protocol).

    GRPO/RLOO run async reward functions in a background event loop, so scoring overlaps with other rewards and
    the reward model lives on other GPUs or hosts. The batch is sent in chunks of ``batch_size`` rows, in
    parallel; a chunk that still fails after ``retries`` gives None (TRL: NaN, no advantage) with a warning.

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
        if not url.rstrip("/").endswith("/get_reward"):
            url = url.rstrip("/") + "/get_reward"
        self.url = url
        self.api_key = api_key
        self.batch_size = max(1, int(batch_size))
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        if isinstance(policy_tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            policy_tokenizer = AutoTokenizer.from_pretrained(str(policy_tokenizer))
        self.policy_tokenizer = policy_tokenizer
        host = url.split("//", 1)[1].split("/", 1)[0]
        self.__name__ = name or _unique_name(f"remote_{_sanitize(host)}")
        self._warned_context = False
        self._reached = False  # until the server first answers, an unreachable server is an error, not a None

    def _texts(self, prompt: Any, completion: Any) -> tuple[str, str]:
        response = _response_text(completion)
        if isinstance(prompt, str):
            return prompt + response, prompt
        if self.policy_tokenizer is not None:
            text = self.policy_tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
            return text + response, text
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if len(prompt) > 1 and not self._warned_context:
            logger.warning("%s: without policy_tokenizer only the last user message is sent as the prompt; pass "
                           "policy_tokenizer= (and start the server with --policy-tokenizer) to keep the "
                           "conversation", self.__name__)
            self._warned_context = True
        text = users[-1] if users and isinstance(users[-1], str) else ""
        return text + response, text

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
                            _raise_for_status(self.url, resp.status, (await resp.text())[:300])
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
            _raise_for_status(self.url, err.code, err.read()[:300].decode(errors="replace"))

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                       completion_ids: Sequence | None = None, log_metric: Callable | None = None,
                       log_extra: Callable | None = None, trainer_state: Any = None,
                       **kwargs: Any) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"{self.__name__}: got {len(prompts)} prompts but {len(completions)} completions")
        n = len(prompts)
        labels = kwargs.get("label") or kwargs.get("labels") or kwargs.get("answer") or [""] * n
        queries, ptexts = zip(*(self._texts(p, c) for p, c in zip(prompts, completions))) if n else ((), ())
        chunks = [range(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]
        try:
            import aiohttp
        except ImportError:  # the stdlib fallback runs each request in a worker thread
            aiohttp = None

        async def run(session):
            return await asyncio.gather(*(
                self._post(session, {"query": [queries[i] for i in ch], "prompts": [ptexts[i] for i in ch],
                                     "labels": [labels[i] if i < len(labels) else "" for i in ch]})
                for ch in chunks), return_exceptions=True)

        if aiohttp is not None:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
                results = await run(session)
        else:
            results = await run(None)
        fatal = next((r for r in results if isinstance(r, RemoteRewardError)), None)
        if fatal is not None:
            raise fatal  # training on without rewards would be silent: a wrong key, URL or request is an error
        raw: list[float | None] = [None] * n
        extras: dict[str, list[float]] = defaultdict(list)
        failure = None
        for ch, res in zip(chunks, results):
            if isinstance(res, BaseException):
                failure = res
                continue
            values = res.get("rewards", res.get("scores"))
            if not isinstance(values, list) or len(values) != len(ch):
                failure = RuntimeError(f"server answered {str(res)[:200]} for {len(ch)} rows")
                continue
            for i, v in zip(ch, values):
                raw[i] = None if v is None else float(v)
            for k, vals in (res.get("extra_logs") or {}).items():
                if isinstance(vals, list):
                    extras[k].extend(float(v) for v in vals if isinstance(v, (int, float)))
        metrics = {f"server/{k}": sum(v) / len(v) for k, v in extras.items() if v}
        valid = [r for r in raw if r is not None]
        if valid and (self.normalize or self.clip is not None or self.length_penalty):
            metrics["raw_mean"] = sum(valid) / len(valid)
        # statistics stay local: collectives do not belong in TRL's background event loop
        rewards, shaping = self._shape(raw, completions, completion_ids, reduce_stats=False)
        metrics.update(shaping)
        if failure is not None:
            missing = sum(r is None for r in rewards)
            logger.warning("%s: %d of %d rows have no reward (None): %s", self.__name__, missing, n, failure)
            metrics["none_frac"] = missing / max(n, 1)
        self._record(metrics, log_metric)
        return rewards
