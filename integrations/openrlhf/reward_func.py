"""OpenRLHF ``--reward.remote_url /path/to/reward_func.py``: a thin client of ``rmplugins serve``.

OpenRLHF imports this file in every rollout actor and calls ``reward_func(queries, prompts, labels)`` once per
sample from many threads. Prefer it over pointing ``--reward.remote_url`` at the server directly when you need
an API key (OpenRLHF's own HTTP client sends no headers), several servers, or clear errors in the actor logs.
It only needs the standard library and torch (which OpenRLHF has).

Environment variables (read on every call, so they can be set in the Ray runtime env; checked when OpenRLHF loads
this file and on every call, so a malformed one stops the run with its name, not a Python error mid-training):
    RMPLUGINS_REWARD_URL      server URL(s), comma-separated, round-robin (default http://127.0.0.1:5000/get_reward;
                              a bare http://host:port gets /get_reward appended)
    RMPLUGINS_API_KEY         bearer key, when the server was started with --api-key
    RMPLUGINS_REWARD_TIMEOUT  seconds per attempt (default 180, as OpenRLHF's client)
    RMPLUGINS_REWARD_RETRIES  attempts for connection errors, 429 and 5xx answers (default 5; 4xx is not retried)

A sample the reward model rejects (a generating judge that wrote no verdict, a prompt it cannot read whole) is
refused by the server with its reason, and OpenRLHF has no "no reward" value: this raises, logged as an error here
(OpenRLHF's executor logs it at INFO only). Start the server with ``--fallback-reward X`` to answer such a sample with
the reward X (flagged ``no_reward`` = 1 in extra_logs) instead.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

logger = logging.getLogger("rmplugins.reward_func")
DEFAULT_URL = "http://127.0.0.1:5000/get_reward"
ROUTE = "/get_reward"
OTHER_ROUTES = ("/score", "/classify", "/pooling", "/remote_rm")  # the same server's routes for other frameworks

_lock = threading.Lock()
_cycles: dict[str, itertools.cycle] = {}


def _urls(raw: str) -> list[str]:
    """RMPLUGINS_REWARD_URL's servers, each ending in /get_reward, or a ValueError that says what to set."""
    urls = []
    for url in (u.strip().rstrip("/") for u in raw.split(",")):
        parts = urllib.parse.urlsplit(url)
        if url and not _is_http(parts):
            raise ValueError(f"RMPLUGINS_REWARD_URL: {url!r} is not an http(s) URL; set e.g. "
                             f"{DEFAULT_URL} (several servers: comma-separated)")
        if parts.path in OTHER_ROUTES:
            raise ValueError(f"RMPLUGINS_REWARD_URL: {url!r} names the server's {parts.path} route, which speaks "
                             f"another framework's protocol; this client speaks OpenRLHF's: give "
                             f"{parts.scheme}://{parts.netloc} or {parts.scheme}://{parts.netloc}{ROUTE}")
        if url:
            urls.append(url if parts.path.endswith(ROUTE) else url + ROUTE)
    if not urls:
        raise ValueError(f"RMPLUGINS_REWARD_URL is empty; set the server's URL, e.g. {DEFAULT_URL}")
    return urls


def _is_http(parts: urllib.parse.SplitResult) -> bool:
    try:
        parts.port  # a port that is not a number raises
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _number(name: str, default: str, kind: type, meaning: str):
    """A positive, finite number from the environment, or a ValueError that names the variable."""
    raw = os.environ.get(name, default)
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not 0 < value < float("inf"):
        raise ValueError(f"{name}={raw!r}: must be {meaning} (default {default})")
    return value


def _settings() -> tuple[float, int]:
    """The timeout and the number of attempts, checked; the URLs are checked as they are first used."""
    return (_number("RMPLUGINS_REWARD_TIMEOUT", "180", float, "a positive number of seconds"),
            _number("RMPLUGINS_REWARD_RETRIES", "5", int, "a whole number of attempts, 1 or more"))


def _next_url() -> str:
    raw = os.environ.get("RMPLUGINS_REWARD_URL", DEFAULT_URL)
    with _lock:  # one round-robin per URL list, shared by all threads
        if raw not in _cycles:
            _cycles[raw] = itertools.cycle(_urls(raw))
        return next(_cycles[raw])


def _fault(body: str) -> str | None:
    """The ``fault`` an rmplugins server names in a 500 (``non_finite``: its model's forward gave NaN), if any."""
    try:
        return json.loads(body).get("fault")
    except (ValueError, AttributeError):
        return None


def _post(payload: dict) -> dict:
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("RMPLUGINS_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    timeout, attempts = _settings()
    last = None
    for attempt in range(attempts):
        url = _next_url()
        try:
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            reason = err.read().decode(errors="replace")
            # our request is wrong, or (a 500 naming a "fault") the reward model is broken: retrying won't help
            if 400 <= err.code < 500 and err.code not in (408, 429) or _fault(reason):
                message = f"reward server {url} refused the request ({err.code}): {reason[:1000]}"
                logger.error(message)  # OpenRLHF's executor catches the exception and logs it at INFO only
                raise RuntimeError(message) from None
            last = f"{err.code}: {reason[:500]}"
        except (urllib.error.URLError, OSError, ValueError) as err:
            last = f"{type(err).__name__}: {err}"
        logger.warning("reward server %s failed (attempt %d/%d): %s", url, attempt + 1, attempts, last)
        if attempt + 1 < attempts:
            time.sleep(min(8.0, 0.5 * 2 ** attempt))
    raise RuntimeError(f"reward server unreachable after {attempts} attempts: {last}")


def reward_func(queries, prompts, labels, **kwargs):
    """OpenRLHF's reward function: ``{"rewards": tensor, "scores": tensor, "extra_logs": {name: tensor}}``."""
    import torch

    labels = [("" if label is None else label) for label in (labels or [""] * len(queries))]
    answer = _post({"query": list(queries), "prompts": list(prompts), "labels": labels})
    return {
        "rewards": torch.tensor(answer["rewards"], dtype=torch.float32),
        "scores": torch.tensor(answer["scores"], dtype=torch.float32),
        "extra_logs": {k: torch.tensor(v, dtype=torch.float32) for k, v in answer.get("extra_logs", {}).items()},
    }


# OpenRLHF loads this file when its actors start: a malformed setting stops the run there, not at the first reward
_settings()
_urls(os.environ.get("RMPLUGINS_REWARD_URL", DEFAULT_URL))
