"""NeMo-Gym resources server: every rmplugins family (group rewards included) as a NeMo-RL / NeMo-Gym reward.

NeMo-RL trains on NeMo-Gym environments, and its own ``reward_model`` environment runs Bradley-Terry classifiers
only. This server answers NeMo-Gym's ``/verify`` (``BaseVerifyRequest`` -> ``BaseVerifyResponse``) by sending the
rollout to ``rmplugins serve``'s ``/score`` route, so ArmoRM, pair-PM, PairRM, GPM, process reward models and the
judges score NeMo-RL rollouts as they score TRL's. Copy this directory into a NeMo-Gym checkout's
``resources_servers/``, start the reward server, and name this server's config::

    rmplugins serve --model RLHFlow/ArmoRM-Llama3-8B-v0.1 --port 5000
    ng_run "+config_paths=[resources_servers/rmplugins_reward/configs/rmplugins_reward.yaml]"

What is scored: the conversation of ``responses_create_params`` (``instructions`` as the system message, then the
input's messages; other input items, such as tool calls, are not part of it) and the text of the response's
assistant messages (its reasoning items left out: a reward model reads the answer).

Groups: pairwise families and judges rank a prompt's whole group when the reward server runs with ``--group-size
N`` (N = the rollouts per prompt). Each request carries its group: NeMo-Gym's ``_ng_group_id`` (with its
``_ng_group_attempt``: a retried group is a new one), else ``_ng_task_index``, else none and the server groups by
prompt; ``_ng_rollout_index`` names the sample, so a retried request never counts twice. Each grouped rollout holds
its connection until its group is complete, so start the server with ``--max-connections`` above the rollouts in
flight (NeMo-RL: prompts per step x generations per prompt; 1024 by default). Without ``--group-size``
a pairwise family compares the response with the row's ``reference`` response (its reward: P(response beats
reference)); a row without one fails its rollout with the server's reason.

A sample the reward model refuses (a judge that wrote no verdict, a prompt it cannot read whole, a grouped sample
whose group never completed) is answered with ``mask_sample`` true, NeMo-Gym's "this reward is not a valid
measurement" (also in ``instance_config``, where NeMo-RL's GRPO reads it and zeroes the sample's loss), reward 0, a
``failure_kind`` (from the server's ``error_kinds``, never from the reason's words: ``FAILURE_KINDS``) and the server's
reason; the other samples get their rewards. A reward
server that cannot be reached in ``retries`` attempts masks the sample the same way (``transport_unreachable``,
logged as an error), as NeMo-Gym masks an unavailable judge. A request the server refuses as wrong (a malformed or
unauthorized request: a wrong ``url`` route or ``api_key``) fails the rollout with the server's reason: a wrong
setting is never turned into rewards; nor is a broken reward model (a 500 with ``"fault"``: its forward gave NaN).
The server's per-sample logs (``rm_score``, ArmoRM's objectives,
``group_complete``...) come back as top-level fields, where NeMo-Gym's aggregate metrics read them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from contextlib import asynccontextmanager
from typing import Any, Optional

import aiohttp
from fastapi import FastAPI, HTTPException
from nemo_gym.base_resources_server import (
    BaseResourcesServerConfig,
    BaseVerifyRequest,
    BaseVerifyResponse,
    SimpleResourcesServer,
)
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

logger = logging.getLogger(__name__)

ROUTE = "/score"
OTHER_ROUTES = ("/get_reward", "/classify", "/pooling", "/remote_rm")  # the same server's routes for other clients
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# the kind of the reward server's refusal (its answer's error_kinds: rmplugins.refusals) -> NeMo-Gym's failure kind:
# a shared one where NeMo-Gym has it, else namespaced "<server>:<kind>" (nemo_gym.failure_kinds)
FAILURE_KINDS = {"no_verdict": "judge_unparseable", "group_incomplete": "cohort_incomplete",
                 "too_long": "rmplugins:too_long", "unreadable": "rmplugins:unreadable"}


class RmpluginsRewardConfig(BaseResourcesServerConfig):
    """Where ``rmplugins serve`` listens and how long to wait for it."""

    url: str = "http://127.0.0.1:5000/score"
    api_key: Optional[str] = None
    timeout_s: float = Field(default=180.0, gt=0, allow_inf_nan=False)  # a group waits for its slowest rollout
    retries: int = Field(default=5, ge=1)

    @field_validator("url")
    @classmethod
    def _score_url(cls, url: str) -> str:
        url = url.strip().rstrip("/")
        parts = urllib.parse.urlsplit(url)
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            raise ValueError(f"url {url!r} is not an http(s) URL; give rmplugins serve's address, e.g. "
                             "http://127.0.0.1:5000/score")
        if parts.path in OTHER_ROUTES:
            raise ValueError(f"url {url!r} names rmplugins serve's {parts.path} route, which speaks another "
                             f"framework's protocol; this server speaks /score: {parts.scheme}://{parts.netloc}{ROUTE}")
        if parts.path not in ("", ROUTE):
            raise ValueError(f"url {url!r}: rmplugins serve answers NeMo-Gym on {ROUTE}; give "
                             f"{parts.scheme}://{parts.netloc}{ROUTE}")
        return url if parts.path == ROUTE else url + ROUTE


class RmpluginsVerifyRequest(BaseVerifyRequest):
    """NeMo-Gym's verify request; the group coordinates NeMo-Gym's rollout collection adds are read, the rest of
    the row is echoed back."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)

    group_id: Optional[str] = Field(default=None, alias="_ng_group_id")
    group_attempt: int = Field(default=0, alias="_ng_group_attempt", ge=0)
    task_index: Optional[int] = Field(default=None, alias="_ng_task_index")
    rollout_index: Optional[int] = Field(default=None, alias="_ng_rollout_index")
    reference: Optional[str] = None  # a reference response, for a pairwise family served without --group-size


class RmpluginsVerifyResponse(BaseVerifyResponse):
    """The reward, and the reward server's logs of the sample as top-level numbers."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)


def _text(content: Any) -> str:
    """A message's text: a string, or its text parts (input_text / output_text; a refusal's text) joined."""
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        part = part.model_dump() if hasattr(part, "model_dump") else part
        if isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text"):
            parts.append(part.get("text") or "")
        elif isinstance(part, dict) and part.get("type") == "refusal":
            parts.append(part.get("refusal") or "")
    return "".join(parts)


def conversation(params: Any) -> list[dict]:
    """The chat messages before the response: ``instructions`` as the system message, then the input's messages
    (a string input is one user message)."""
    messages = []
    instructions = getattr(params, "instructions", None)
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = getattr(params, "input", None)
    if isinstance(items, str):
        return messages + [{"role": "user", "content": items}]
    for item in items or []:
        item = item.model_dump() if hasattr(item, "model_dump") else item
        if not isinstance(item, dict) or (item.get("type") or "message") != "message":
            continue
        role = ROLES.get(item.get("role"))
        if role is None:
            raise ValueError(f"rmplugins_reward: an input message has role {item.get('role')!r}; a reward model "
                             f"reads {sorted(ROLES)}")
        messages.append({"role": role, "content": _text(item.get("content"))})
    if not messages or messages[-1]["role"] == "assistant":
        raise ValueError("rmplugins_reward: the conversation before the response must end with a user (or system) "
                         "message; responses_create_params.input has none")
    return messages


def response_text(response: Any) -> str:
    """The text of the response's assistant messages, in order; reasoning and tool-call items left out."""
    texts = []
    for item in getattr(response, "output", None) or []:
        item = item.model_dump() if hasattr(item, "model_dump") else item
        if isinstance(item, dict) and item.get("type") == "message" and item.get("role", "assistant") == "assistant":
            texts.append(_text(item.get("content")))
    return "\n".join(t for t in texts if t)


def group_key(body: RmpluginsVerifyRequest) -> Optional[str]:
    """The sample's group for a reward server started with ``--group-size``: NeMo-Gym's group id and attempt, else
    its task index, else None (the server groups by prompt)."""
    if body.group_id is not None:
        return f"{body.group_id}#attempt{body.group_attempt}"
    if body.task_index is not None:
        return f"task{body.task_index}"
    return None


def failure_kind(kind: Optional[str]) -> str:
    """NeMo-Gym's failure kind for the reward server's kind of refusal (any other refusal: ``verifier_error``)."""
    return FAILURE_KINDS.get(kind, "verifier_error")


def _retryable(status: int, text: str) -> bool:
    """4xx answers say the request is wrong (retrying cannot help), except a timeout (408) or back-pressure (429);
    a 500 whose body names a ``fault`` says the reward model itself is broken (``non_finite``: its forward gives NaN),
    which no retry changes either."""
    try:
        fault = json.loads(text).get("fault")
    except (ValueError, AttributeError):
        fault = None
    return not fault and not (400 <= status < 500 and status not in (408, 429))


class RefusedRequest(RuntimeError):
    """The reward server refused the request itself (malformed, unauthorized: a setting is wrong), or its reward
    model is broken (a fault): no reward, and no retry would give one."""


class RmpluginsRewardServer(SimpleResourcesServer):
    config: RmpluginsRewardConfig
    _session: Optional[aiohttp.ClientSession] = PrivateAttr(default=None)

    def payload(self, body: RmpluginsVerifyRequest) -> dict:
        payload = {"prompts": [conversation(body.responses_create_params)],
                   "completions": [response_text(body.response)], "partial": True}
        if body.reference is not None:
            payload["references"] = [body.reference]
        key = group_key(body)
        if key is not None:
            payload["group_ids"] = [key]
            if body.rollout_index is not None:
                payload["sample_ids"] = [f"{key}#rollout{body.rollout_index}"]
        return payload

    def setup_webserver(self) -> FastAPI:
        """NeMo-Gym's app, closing this server's HTTP session to the reward server when the app stops."""
        app = super().setup_webserver()
        previous = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(app):
            async with previous(app) as state:
                try:
                    yield state
                finally:
                    await self.aclose()

        app.router.lifespan_context = lifespan
        return app

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def checked(self, text: str) -> dict:
        """rmplugins serve's ``/score`` answer (one reward, or null), or the refusal of whatever else answered 200
        (JSON or not: a wrong address is a wrong setting, never a lost connection to retry and mask)."""
        try:
            answer = json.loads(text)
        except ValueError:
            answer = text
        rewards = answer.get("rewards") if isinstance(answer, dict) else None
        if not isinstance(rewards, list) or len(rewards) != 1:
            raise RefusedRequest(f"{self.config.url} answered 200 with something that is not rmplugins serve's "
                                 f"/score answer ({json.dumps(answer)[:200]}): is url rmplugins serve's address?")
        return answer

    async def post(self, payload: dict) -> dict:
        """The reward server's answer; retried on a lost connection, 408, 429 and 5xx."""
        cfg = self.config
        headers = {"Content-Type": "application/json"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        if self._session is None or self._session.closed:
            # no cap on connections (aiohttp's default is 100): a grouped sample holds its connection until its
            # group is complete, so a cap below the rollouts in flight would keep a group's last members queued
            # here until --group-timeout ranked the group without them
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                  timeout=aiohttp.ClientTimeout(total=cfg.timeout_s))
        last = None
        for attempt in range(cfg.retries):
            try:
                async with self._session.post(cfg.url, data=json.dumps(payload), headers=headers) as answer:
                    text = await answer.text()
                    if answer.status == 200:
                        return self.checked(text)
                    if not _retryable(answer.status, text):
                        raise RefusedRequest(f"reward server {cfg.url} refused the request ({answer.status}): "
                                             f"{text[:1000]}")
                    last = f"{answer.status}: {text[:500]}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as err:
                last = f"{type(err).__name__}: {err}"
            if attempt + 1 < cfg.retries:
                await asyncio.sleep(min(8.0, 0.5 * 2 ** attempt))
        raise ConnectionError(f"reward server {cfg.url} unreachable after {cfg.retries} attempts: {last}")

    @staticmethod
    def masked(echoed: dict, kind: str, reason: str) -> "RmpluginsVerifyResponse":
        """No reward for this sample: NeMo-Gym's ``mask_sample``, and the same flag in ``instance_config``, where
        NeMo-RL's GRPO reads it (``nemo_rl/experience/rollouts.py``; NeMo-Gym's own judge failsafe sets both)."""
        config = echoed.get("instance_config")
        return RmpluginsVerifyResponse.model_validate(
            echoed | {"reward": 0.0, "mask_sample": True, "failure_kind": kind, "failure_reason": reason,
                      "instance_config": {**(config if isinstance(config, dict) else {}), "mask_sample": True}})

    async def verify(self, body: RmpluginsVerifyRequest) -> RmpluginsVerifyResponse:
        echoed = body.model_dump(by_alias=True)
        try:
            payload = self.payload(body)
        except ValueError as err:  # a rollout a reward model cannot read: the data is wrong, not the policy
            raise HTTPException(status_code=422, detail=str(err)) from None
        try:
            answer = await self.post(payload)
        except RefusedRequest as err:  # a wrong setting: fail the rollout with the reward server's reason
            logger.error("rmplugins_reward: %s", err)
            raise HTTPException(status_code=502, detail=str(err)) from None
        except ConnectionError as err:
            logger.error("rmplugins_reward: %s; the sample is masked", err)
            return self.masked(echoed, "transport_unreachable", str(err))
        reward = answer["rewards"][0]
        if reward is None:
            reason = (answer.get("errors") or ["the reward model gave no reward"])[0]
            return self.masked(echoed, failure_kind((answer.get("error_kinds") or [None])[0]), reason)
        logs = {name: values[0] for name, values in answer.get("extra_logs", {}).items()}
        return RmpluginsVerifyResponse.model_validate(echoed | logs | {"reward": float(reward)})


if __name__ == "__main__":
    RmpluginsRewardServer.run_webserver()
