"""verl ``custom_reward_function``: score responses with ``rmplugins serve`` (any family, batched server-side).

    custom_reward_function.path=integrations/verl/reward_server.py
    custom_reward_function.name=compute_score

verl passes the decoded response (``solution_str``) but not the prompt, so the prompt must be in each row's
``extra_info`` under ``prompt`` (a string or a list of chat messages), ``messages``, ``question`` or ``query``.
Pairwise kinds (pair_pm, pairrm, gpm) need a reference response: ``extra_info["reference"]``, else the
``ground_truth`` string. Works with the per-sample (naive/dapo) and the ``batch`` reward managers.

Environment: RMPLUGINS_SCORE_URL (default http://127.0.0.1:5000/score), RMPLUGINS_API_KEY,
RMPLUGINS_REWARD_TIMEOUT (180), RMPLUGINS_REWARD_RETRIES (5).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

PROMPT_KEYS = ("prompt", "messages", "question", "query")


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


def _post(payload: dict) -> dict:
    url = os.environ.get("RMPLUGINS_SCORE_URL", "http://127.0.0.1:5000/score")
    headers = {"Content-Type": "application/json"}
    if os.environ.get("RMPLUGINS_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['RMPLUGINS_API_KEY']}"
    timeout = float(os.environ.get("RMPLUGINS_REWARD_TIMEOUT", "180"))
    attempts = max(1, int(os.environ.get("RMPLUGINS_REWARD_RETRIES", "5")))
    last = None
    for attempt in range(attempts):
        try:
            req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            reason = err.read().decode(errors="replace")[:500]
            if 400 <= err.code < 500 and err.code not in (408, 429):
                raise RuntimeError(f"reward server {url} refused the request ({err.code}): {reason}") from None
            last = f"{err.code}: {reason}"
        except (urllib.error.URLError, OSError, ValueError) as err:
            last = f"{type(err).__name__}: {err}"
        if attempt + 1 < attempts:
            time.sleep(min(8.0, 0.5 * 2 ** attempt))
    raise RuntimeError(f"reward server {url} unreachable after {attempts} attempts: {last}")


def _score(solution_strs, ground_truths, extra_infos) -> list[dict]:
    answer = _post({"prompts": [_prompt(e) for e in extra_infos], "completions": list(solution_strs),
                    "references": [_reference(g, e) for g, e in zip(ground_truths, extra_infos)]})
    logs = answer.get("extra_logs", {})
    return [{"score": s, **{k: v[i] for k, v in logs.items()}} for i, s in enumerate(answer["scores"])]


def compute_score(data_source=None, solution_str=None, ground_truth=None, extra_info=None, *, data_sources=None,
                  solution_strs=None, ground_truths=None, extra_infos=None, **kwargs):
    """Singular arguments -> one dict with ``score``; the batch manager's plural arguments -> a list of them."""
    if solution_strs is not None:
        n = len(solution_strs)
        return _score(solution_strs, list(ground_truths if ground_truths is not None else [None] * n),
                      list(extra_infos if extra_infos is not None else [{}] * n))
    return _score([solution_str], [ground_truth], [extra_info])[0]
