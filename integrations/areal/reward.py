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

Settings: ``REWARD_MODEL_SERVICE_URL``, ``RMPLUGINS_API_KEY``, ``RMPLUGINS_REWARD_TIMEOUT`` (seconds, 14).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

DEFAULT_URL = "http://localhost:30000/classify"
GROUP_KEYS = ("group_id", "uid")


def rmplugins_reward(prompt: str, completions: str, prompt_ids=None, completion_ids=None, **data) -> float:
    url = os.environ.get("REWARD_MODEL_SERVICE_URL") or DEFAULT_URL
    body = {"input": prompt + completions, "use_activation": False}
    group = next((data[k] for k in GROUP_KEYS if isinstance(data.get(k), (str, int))), None)
    if group is not None:
        body["group_id"] = str(group)
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("RMPLUGINS_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    timeout = float(os.environ.get("RMPLUGINS_REWARD_TIMEOUT", "14"))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as err:  # AReaL logs it and retries; the reason says what was wrong
        raise RuntimeError(f"reward server {url} answered {err.code}: "
                           f"{err.read().decode(errors='replace')[:500]}") from None
    return float(answer["data"][-1]["probs"][-1])
