"""AReaL reward function: score each rollout with ``rmplugins serve``'s vLLM-compatible ``/classify``.

AReaL's workflows call ``reward_fn(prompt, completions, prompt_ids, completion_ids, **data)`` for one sample, in a
process pool (``areal.api.reward_api.AsyncRewardWrapper``: picklable, 15 s a try, 0 after the last try), with the
policy-templated prompt text and the decoded completion. This function posts vLLM's completion form
``{"input": prompt + completion, "use_activation": false}`` to the URL AReaL's ``scheduler.reward_model_service_url``
names (``$REWARD_MODEL_SERVICE_URL``, default ``http://localhost:30000/classify``) and returns ``probs[-1]``. Start
the server with ``--policy-tokenizer <the policy>`` so the conversation is recovered exactly::

    rmplugins serve --model RLHFlow/ArmoRM-Llama3-8B-v0.1 --port 30000 --policy-tokenizer Qwen/Qwen3-8B
    # in the AReaL experiment: reward_fn = "integrations.areal.reward.rmplugins_reward"

Group-relative families (``--group-size``): AReaL gives a reward call 15 s, so start the server with
``--group-timeout 10``; a group whose samples finish generating further apart is ranked as the part that came.
A row's ``group_id`` or ``uid`` (a dataset column) keys its group when present; else the server groups by prompt.

Settings: ``REWARD_MODEL_SERVICE_URL`` (a bare http://host:port gets /classify appended), ``RMPLUGINS_API_KEY``,
``RMPLUGINS_REWARD_TIMEOUT`` (seconds, 14). They are checked when AReaL imports this module and on every call: a
malformed one stops the run with its name, not a Python error in every rollout.

A sample the reward model rejects (a generating judge that wrote no verdict, a prompt it cannot read whole) is
refused with its reason, which AReaL re-raises (it has no "no reward" value); start the server with
``--fallback-reward X`` to answer such a sample with the reward X instead.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_URL = "http://localhost:30000/classify"
ROUTE = "/classify"
OTHER_ROUTES = ("/get_reward", "/score", "/pooling", "/remote_rm")  # the same server's routes for other frameworks
GROUP_KEYS = ("group_id", "uid")


def _is_http(parts: urllib.parse.SplitResult) -> bool:
    try:
        parts.port  # a port that is not a number raises
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _settings() -> tuple[str, float]:
    """The server's /classify URL and the timeout, or a ValueError that names the variable and what to set."""
    url = (os.environ.get("REWARD_MODEL_SERVICE_URL") or DEFAULT_URL).strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if not _is_http(parts):
        raise ValueError(f"REWARD_MODEL_SERVICE_URL: {url!r} is not an http(s) URL; set e.g. {DEFAULT_URL}")
    if parts.path in OTHER_ROUTES:
        raise ValueError(f"REWARD_MODEL_SERVICE_URL: {url!r} names the server's {parts.path} route, which speaks "
                         f"another framework's protocol; AReaL's is vLLM's: give {parts.scheme}://{parts.netloc}{ROUTE}")
    raw = os.environ.get("RMPLUGINS_REWARD_TIMEOUT", "14")
    try:
        timeout = float(raw)
    except ValueError:
        timeout = float("nan")
    if not 0 < timeout < float("inf"):
        raise ValueError(f"RMPLUGINS_REWARD_TIMEOUT={raw!r}: must be a positive number of seconds (default 14, "
                         "under the 15 s AReaL gives a reward call)")
    return (url if parts.path.endswith(ROUTE) else url + ROUTE), timeout


def rmplugins_reward(prompt: str, completions: str, prompt_ids=None, completion_ids=None, **data) -> float:
    url, timeout = _settings()
    body = {"input": prompt + completions, "use_activation": False}
    group = next((data[k] for k in GROUP_KEYS if isinstance(data.get(k), (str, int))), None)
    if group is not None:
        body["group_id"] = str(group)
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("RMPLUGINS_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as err:  # AReaL logs it and retries; the reason says what was wrong
        raise RuntimeError(f"reward server {url} answered {err.code}: "
                           f"{err.read().decode(errors='replace')[:500]}") from None
    return float(answer["data"][-1]["probs"][-1])


_settings()  # AReaL imports this module when its workflow is built: a malformed setting stops the run there
