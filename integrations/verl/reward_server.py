"""verl ``custom_reward_function``: score responses with ``rmplugins serve`` (any family, batched server-side).

verl 0.9 (its reward loop, ``verl/experimental/reward_loop``) awaits a coroutine function in its event loop, so
``compute_score_async`` scores without a thread per sample; ``compute_score`` is the synchronous form (run by verl in
its thread pool, and by the older ``batch`` manager with plural arguments)::

    reward.custom_reward_function.path=integrations/verl/reward_server.py
    reward.custom_reward_function.name=compute_score_async
    +reward.custom_reward_function.reward_kwargs.url=http://127.0.0.1:5000/score   # optional

verl passes the decoded response (``solution_str``, special tokens removed) but not the prompt, so the prompt must
be in each row's ``extra_info`` under ``prompt`` (a string or a list of chat messages), ``messages``, ``question``
or ``query``. Pairwise kinds (pair_pm, pairrm, gpm) need a reference response: ``extra_info["reference"]``, else
the ``ground_truth`` string; or, with a server started with ``--group-size N`` (N = ``actor_rollout_ref.rollout.n``),
each response gets its reward within its prompt's group (``extra_info["group_id"]`` or ``["uid"]`` keys the group
when present, else the prompt does).

Settings (``reward_kwargs`` win over the environment): ``url`` / RMPLUGINS_SCORE_URL (default
http://127.0.0.1:5000/score; a bare http://host:port gets /score appended), ``api_key`` / RMPLUGINS_API_KEY,
RMPLUGINS_REWARD_TIMEOUT (180 s), RMPLUGINS_REWARD_RETRIES (5 attempts). They are checked when verl loads this file
and on every call: a malformed one stops the run with its name, not a Python error mid-training.

A sample the reward model rejects (a generating judge that wrote no verdict, a prompt it cannot read whole) is
refused by the server with its reason, which stops the run (verl has no "no reward" value); start the server with
``--fallback-reward X`` to score such a sample X instead (``no_reward`` = 1 in its ``reward_extra_info``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_URL = "http://127.0.0.1:5000/score"
ROUTE = "/score"
OTHER_ROUTES = ("/get_reward", "/classify", "/pooling", "/remote_rm")  # the same server's routes for other frameworks
PROMPT_KEYS = ("prompt", "messages", "question", "query")
GROUP_KEYS = ("group_id", "uid")


def _prompt(extra_info) -> object:
    extra_info = extra_info or {}
    for key in PROMPT_KEYS:
        value = extra_info.get(key) if hasattr(extra_info, "get") else None
        if value is not None:
            return list(value) if not isinstance(value, str) else value
    raise ValueError("rmplugins verl reward: the prompt is missing; store it in the dataset's extra_info under one "
                     f"of {PROMPT_KEYS} (a string or a list of chat messages)")


def _reference(ground_truth, extra_info):
    ref = (extra_info or {}).get("reference") if hasattr(extra_info or {}, "get") else None
    if isinstance(ref, str):
        return ref
    return ground_truth if isinstance(ground_truth, str) and ground_truth else None


def _is_http(parts: urllib.parse.SplitResult) -> bool:
    try:
        parts.port  # a port that is not a number raises
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _url(url, name: str) -> str:
    """The server's /score URL, or a ValueError that says what to set."""
    url = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if not _is_http(parts):
        raise ValueError(f"{name}: {url!r} is not an http(s) URL; set e.g. {DEFAULT_URL}")
    if parts.path in OTHER_ROUTES:
        raise ValueError(f"{name}: {url!r} names the server's {parts.path} route, which speaks another framework's "
                         f"protocol; this function speaks verl's: give {parts.scheme}://{parts.netloc}{ROUTE}")
    return url if parts.path.endswith(ROUTE) else url + ROUTE


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


def _settings(url=None, api_key=None) -> tuple[str, dict, float, int]:
    url = _url(url, "reward_kwargs.url") if url else _url(os.environ.get("RMPLUGINS_SCORE_URL", DEFAULT_URL),
                                                          "RMPLUGINS_SCORE_URL")
    headers = {"Content-Type": "application/json"}
    key = api_key or os.environ.get("RMPLUGINS_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    timeout = _number("RMPLUGINS_REWARD_TIMEOUT", "180", float, "a positive number of seconds")
    attempts = _number("RMPLUGINS_REWARD_RETRIES", "5", int, "a whole number of attempts, 1 or more")
    return url, headers, timeout, attempts


def _refused(url, code, reason) -> RuntimeError:
    return RuntimeError(f"reward server {url} refused the request ({code}): {reason}")


def _unreachable(url, attempts, last) -> RuntimeError:
    return RuntimeError(f"reward server {url} unreachable after {attempts} attempts: {last}")


def _retryable(code: int, body: str) -> bool:
    """4xx answers say the request is wrong (retrying cannot help), except a timeout (408) or back-pressure (429);
    a 500 whose body names a ``fault`` says the reward model is broken (its forward gave NaN): no retry helps."""
    try:
        fault = json.loads(body).get("fault")
    except (ValueError, AttributeError):
        fault = None
    return not fault and not (400 <= code < 500 and code not in (408, 429))


def _post(payload: dict, url=None, api_key=None) -> dict:
    url, headers, timeout, attempts = _settings(url, api_key)
    last = None
    for attempt in range(attempts):
        try:
            req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            reason = err.read().decode(errors="replace")
            if not _retryable(err.code, reason):
                raise _refused(url, err.code, reason[:1000]) from None
            last = f"{err.code}: {reason[:500]}"
        except (urllib.error.URLError, OSError, ValueError) as err:
            last = f"{type(err).__name__}: {err}"
        if attempt + 1 < attempts:
            time.sleep(min(8.0, 0.5 * 2 ** attempt))
    raise _unreachable(url, attempts, last)


_SESSIONS: dict = {}  # one aiohttp session per event loop (verl runs its reward managers in one loop)


async def _post_async(payload: dict, url=None, api_key=None) -> dict:
    import aiohttp

    url, headers, timeout, attempts = _settings(url, api_key)
    loop = asyncio.get_running_loop()
    session = _SESSIONS.get(loop)
    if session is None or session.closed:
        session = _SESSIONS[loop] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
    last = None
    for attempt in range(attempts):
        try:
            async with session.post(url, data=json.dumps(payload), headers=headers) as response:
                body = await response.text()
                if response.status == 200:
                    return json.loads(body)
                if not _retryable(response.status, body):
                    raise _refused(url, response.status, body[:1000])
                last = f"{response.status}: {body[:500]}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as err:
            last = f"{type(err).__name__}: {err}"
        if attempt + 1 < attempts:
            await asyncio.sleep(min(8.0, 0.5 * 2 ** attempt))
    raise _unreachable(url, attempts, last)


def _group_id(extra_info):
    """The sample's group for a server started with --group-size: ``extra_info["group_id"]`` or ``["uid"]`` when
    the dataset or a custom manager put one there; else None and the server groups by prompt."""
    extra_info = extra_info or {}
    for key in GROUP_KEYS:
        value = extra_info.get(key) if hasattr(extra_info, "get") else None
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    return None


def _payload(solution_strs, ground_truths, extra_infos) -> dict:
    payload = {"prompts": [_prompt(e) for e in extra_infos], "completions": list(solution_strs),
               "references": [_reference(g, e) for g, e in zip(ground_truths, extra_infos)]}
    groups = [_group_id(e) for e in extra_infos]
    if any(g is not None for g in groups):
        payload["group_ids"] = groups
    return payload


def _results(answer: dict) -> list[dict]:
    logs = answer.get("extra_logs", {})
    return [{"score": s, **{k: v[i] for k, v in logs.items()}} for i, s in enumerate(answer["scores"])]


def compute_score(data_source=None, solution_str=None, ground_truth=None, extra_info=None, *, data_sources=None,
                  solution_strs=None, ground_truths=None, extra_infos=None, url=None, api_key=None, **kwargs):
    """Singular arguments -> one dict with ``score``; the batch manager's plural arguments -> a list of them."""
    if solution_strs is not None:
        n = len(solution_strs)
        return _results(_post(_payload(solution_strs, list(ground_truths if ground_truths is not None else [None] * n),
                                       list(extra_infos if extra_infos is not None else [{}] * n)), url, api_key))
    return _results(_post(_payload([solution_str], [ground_truth], [extra_info]), url, api_key))[0]


async def compute_score_async(data_source=None, solution_str=None, ground_truth=None, extra_info=None, *, url=None,
                              api_key=None, **kwargs):
    """verl 0.9's reward loop awaits this per sample: one POST /score each; the server batches concurrent
    samples (and runs a prompt shared by them once)."""
    answer = await _post_async(_payload([solution_str], [ground_truth], [extra_info]), url, api_key)
    return _results(answer)[0]


# verl loads this file when its reward workers start: a malformed setting stops the run there, not at the first reward
_settings()
