"""Group-relative rewards over one-sample requests (``rmplugins serve --group-size N``).

Every framework asks a reward server for one sample at a time, but a GPM, pair-PM, PairRM or pairwise-judge reward
is relative to the other responses of the same prompt. :class:`GroupBuffer` holds each sample until its group is
complete, ranks the group in one scoring job (``rm.rank_rows``: GPM's GPO score, a pairwise family's round robin or
``--group-method``) and answers every waiting request with its own sample's reward.

The rules (docs/server.md, "Group rewards"; each has a test):

- **Key.** A group id where the request carries one (``group_ids`` / ``group_id``, verl's ``uid`` through
  ``integrations/verl``), else the prompt's messages after the policy-template split. One id with two different
  prompts is refused (422).
- **Complete** at N samples, counted in arrival order: a key that gets more than N forms consecutive groups of N.
  The group is ranked with its responses in sorted order, so a reward never depends on arrival order or batching
  (a tournament's bracket follows that order). The same response text twice counts twice; both get one reward.
- **Retries never double count.** A ``sample_id`` seen before (waiting, or answered within ``RETRY_MEMORY_S``)
  attaches to its first arrival and gets the same reward. Without ids, a sample whose response text matches a
  waiting sample whose client has disconnected is that sample's retry; a reward computed after its client left is
  kept for the retry too. A client that never comes back leaves its sample in the group: it was generated.
- **Never complete.** ``--group-timeout`` seconds after a group's first sample: two or more samples are ranked as
  the group they are, and the answer says so (``extra_logs``: ``group_complete`` 0, ``group_size``); a lone sample
  has no group reward and gets 408 with the reason. Never a hang, never a reward from a group that was not there.
- **The server stops.** The samples waiting for groups, and any that arrive after, get 503 at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..refusals import GROUP_INCOMPLETE, kind_of
from .protocol import RequestError, Sample, refusal, refused

logger = logging.getLogger("rmplugins.server")
RETRY_MEMORY_S = 600.0     # how long a computed reward waits for a retry of its sample
RETRY_MEMORY_ITEMS = 65536
DISCONNECT_POLL_S = 0.5    # how often a waiting request checks that its client is still there


@dataclass(eq=False)
class Waiter:
    """One request waiting for one sample's reward; ``gone`` says (asynchronously) whether its client left."""

    future: asyncio.Future
    gone: Callable[[], Awaitable[bool]] | None = None
    left: bool = False
    key: str = ""
    response: str = ""
    sample_id: str | None = None

    async def check(self) -> bool:
        if not self.left and self.gone is not None and await self.gone():
            self.left = True
        return self.left


@dataclass(eq=False)
class Slot:
    """One sample of a group and the requests waiting for it (more than one when it was retried)."""

    sample: Sample
    waiters: list[Waiter] = field(default_factory=list)

    def abandoned(self) -> bool:
        return all(w.left for w in self.waiters)


@dataclass(eq=False)
class Group:
    key: str
    prompt: str  # the messages as JSON: what a group id must keep
    started: float
    slots: list[Slot] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


@dataclass
class GroupJob:
    """What the scoring thread ranks: one prompt's responses (sorted), and the logs every answer of it carries."""

    messages: list[dict]
    responses: list[str]
    method: str | None
    complete: bool

    def __len__(self) -> int:
        return len(self.responses)


def group_key(sample: Sample) -> tuple[str, str]:
    """(key, prompt JSON): the explicit group id where one was sent, else a digest of the prompt's messages."""
    prompt = json.dumps(sample.messages, sort_keys=True, ensure_ascii=False)
    if sample.group_id is not None:
        return "id:" + sample.group_id, prompt
    return "prompt:" + hashlib.sha256(prompt.encode("utf-8")).hexdigest(), prompt


class GroupBuffer:
    """Holds samples by group until ``size`` have arrived, then submits the group to ``batcher`` (the server's
    :class:`~.batcher.Batcher` or :class:`~.passthrough.PassThrough`) as one :class:`GroupJob`."""

    def __init__(self, batcher: Any, *, size: int, timeout: float, method: str | None, metrics: Any,
                 request_timeout: float, max_waiting: int = 8192):
        if int(size) < 2:
            raise ValueError(f"--group-size {size}: a group-relative reward needs groups of at least 2 samples")
        if not float(timeout) > 0:
            raise ValueError(f"--group-timeout {timeout}: must be more than 0 seconds")
        self.batcher, self.size, self.timeout, self.method = batcher, int(size), float(timeout), method
        self.metrics, self.request_timeout = metrics, float(request_timeout)
        self.max_waiting = int(max_waiting)
        self.waiting: dict[str, Group] = {}
        self.waiting_samples = 0
        self._closed: OrderedDict[str, float] = OrderedDict()  # recently completed keys -> when (spill check)
        self._warned_spill = False
        self._by_id: OrderedDict[str, tuple[float, Any]] = OrderedDict()     # sample id -> (when, result)
        self._unclaimed: OrderedDict[tuple, tuple[float, Any]] = OrderedDict()  # (key, text) -> (when, result)
        self._tasks: set[asyncio.Task] = set()
        self._refusal: RequestError | None = None  # set when the server stops: no group can complete any more

    # ---------------------------------------------------------------- joining
    async def submit(self, samples: list[Sample], gone: Callable[[], Awaitable[bool]] | None,
                     partial: bool = False) -> list:
        """Each sample's reward within its group, in order; raises :class:`RequestError` (408 for a lone sample
        whose group never came, 422 for a sample the model could not rank, 499-style when the client left);
        ``partial``: those 408s and 422s are left in the sample's place instead, the others answered."""
        waiters = [await self.join(s, gone) for s in samples]
        deadline = time.monotonic() + self.timeout + self.request_timeout
        pending = {w.future for w in waiters}
        try:
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RequestError(504, f"no reward within --group-timeout {self.timeout:g} s plus "
                                            f"--request-timeout {self.request_timeout:g} s (server busy)")
                done, pending = await asyncio.wait(pending, timeout=min(DISCONNECT_POLL_S, remaining))
                if pending and gone is not None and await gone():
                    raise ClientGone()
        except BaseException:
            for w in waiters:
                w.left = True
            raise
        if gone is not None and await gone():  # the answer would be lost: keep it for the samples' retries
            for w in waiters:
                if w.sample_id is None:  # a sample with an id is remembered by its id already
                    self._unclaimed[(w.key, w.response)] = (time.monotonic(), w.future.result())
            raise ClientGone()
        results = []
        for w in waiters:
            outcome = w.future.result()
            if isinstance(outcome, BaseException) and not (
                    partial and isinstance(outcome, RequestError) and outcome.status in (408, 422)):
                raise outcome
            results.append(outcome)
        return results

    async def join(self, sample: Sample, gone) -> Waiter:
        loop = asyncio.get_running_loop()
        key, prompt = group_key(sample)
        waiter = Waiter(loop.create_future(), gone, key=key, response=sample.response, sample_id=sample.sample_id)
        self._forget_old()
        if sample.sample_id is not None and sample.sample_id in self._by_id:
            self.metrics.group_retries += 1
            waiter.future.set_result(self._by_id[sample.sample_id][1])
            return waiter
        group = self.waiting.get(key)
        if sample.sample_id is None and group is not None:  # a retry without an id: the same text, its client gone
            for slot in [s for s in group.slots if s.sample.response == sample.response]:
                for w in slot.waiters:
                    await w.check()
        unclaimed = self._unclaimed.pop((key, sample.response), None) if sample.sample_id is None else None
        if unclaimed is not None:
            self.metrics.group_retries += 1
            waiter.future.set_result(unclaimed[1])
            return waiter
        group = self.waiting.get(key)  # again: the checks above let other requests run
        if group is not None:
            if group.prompt != prompt:
                raise RequestError(422, f"group id {sample.group_id!r} was sent with another prompt before: one "
                                        "group id is one prompt's group")
            for slot in group.slots:
                same = (slot.sample.sample_id == sample.sample_id if sample.sample_id is not None
                        else slot.sample.response == sample.response and slot.abandoned())
                if same:
                    self.metrics.group_retries += 1
                    slot.waiters.append(waiter)
                    return waiter
        if self._refusal is not None:
            raise self._refusal
        if self.waiting_samples >= self.max_waiting:
            raise RequestError(503, f"server overloaded: {self.waiting_samples} samples are waiting for their groups "
                                    f"(limit {self.max_waiting}, --max-queue-samples); do the clients send "
                                    f"--group-size ({self.size}) samples of every prompt?")
        if group is None:
            self._note_spill(key, loop.time())
            group = Group(key, prompt, loop.time())
            group.timer = loop.call_later(self.timeout, self._expire, group)
            self.waiting[key] = group
        group.slots.append(Slot(sample, [waiter]))
        self.waiting_samples += 1
        if len(group.slots) >= self.size:
            self._close(group, complete=True)
        return waiter

    def _note_spill(self, key: str, now: float) -> None:
        """A key whose group completed moments ago opens another: more samples of a prompt than --group-size
        (fine for a prompt that is twice in the batch; a wrong --group-size when it happens all the time)."""
        closed = self._closed.get(key)
        if closed is None or now - closed > self.timeout:
            return
        self.metrics.group_spills += 1
        if not self._warned_spill:
            logger.warning("a prompt got more than --group-size %d samples within %g s; they form the next group. "
                           "If the trainer samples more than %d responses per prompt, set --group-size to its "
                           "number (logged once; counted in /metrics.json groups.spills)", self.size, self.timeout,
                           self.size)
            self._warned_spill = True

    # ---------------------------------------------------------------- closing
    def _close(self, group: Group, complete: bool) -> None:
        if self.waiting.get(group.key) is group:
            del self.waiting[group.key]
            self.waiting_samples -= len(group.slots)
        if group.timer is not None:
            group.timer.cancel()
        now = asyncio.get_running_loop().time()
        self._closed[group.key] = now
        self._closed.move_to_end(group.key)
        while len(self._closed) > RETRY_MEMORY_ITEMS:
            self._closed.popitem(last=False)
        self.metrics.group_closed(complete, len(group.slots), asyncio.get_running_loop().time() - group.started)
        task = asyncio.get_running_loop().create_task(self._score(group, complete))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _expire(self, group: Group) -> None:
        if self.waiting.get(group.key) is not group:
            return
        if len(group.slots) >= 2:
            logger.warning("group %s: %d of %d samples within --group-timeout %g s; ranked as a group of %d "
                           "(extra_logs group_complete=0)", group.key[:16], len(group.slots), self.size, self.timeout,
                           len(group.slots))
            self._close(group, complete=False)
            return
        del self.waiting[group.key]
        self.waiting_samples -= len(group.slots)
        self.metrics.groups_expired += 1
        error = RequestError(408, f"only 1 of the {self.size} samples of this prompt's group arrived within "
                                  f"--group-timeout {self.timeout:g} s, and a group-relative reward needs the group: "
                                  "send every sample of the group (n_samples_per_prompt = --group-size), or raise "
                                  "--group-timeout", GROUP_INCOMPLETE)
        for slot in group.slots:
            self._deliver(group, slot, error)

    async def _score(self, group: Group, complete: bool) -> None:
        slots = sorted(group.slots, key=lambda s: s.sample.response)
        job = GroupJob(slots[0].sample.messages, [s.sample.response for s in slots], self.method, complete)
        cost = sum(s.sample.cost() for s in slots) + slots[0].sample.prompt_cost()
        try:
            (outcome,) = await self.batcher.submit([job], cost, self.request_timeout, size=len(slots))
        except Exception as err:  # noqa: BLE001 - every waiter gets the reason
            outcome = err  # a fault (a broken forward, a bug) stays one: a 500, never a refusal given a fallback
            if refused(err):  # the model refused the group
                outcome = RequestError(422, f"the reward model could not rank this group: {err}", kind_of(err))
        for i, slot in enumerate(slots):
            result = outcome if isinstance(outcome, BaseException) else outcome[i]
            if isinstance(result, BaseException):
                result = refusal(result)
            elif isinstance(result, dict):
                result = {**result, "logs": {**result["logs"], "template_recovered": slot.sample.recovered}}
            self._deliver(group, slot, result)

    def _deliver(self, group: Group, slot: Slot, result: Any) -> None:
        now = time.monotonic()
        if slot.sample.sample_id is not None:
            self._by_id[slot.sample.sample_id] = (now, result)
        elif slot.abandoned():  # nobody is left to receive it: kept for the sample's retry
            self._unclaimed[(group.key, slot.sample.response)] = (now, result)
        for waiter in slot.waiters:
            if not waiter.future.done():
                waiter.future.set_result(result)

    def _forget_old(self) -> None:
        cutoff = time.monotonic() - RETRY_MEMORY_S
        for memory in (self._by_id, self._unclaimed):
            while memory and (len(memory) > RETRY_MEMORY_ITEMS or next(iter(memory.values()))[0] < cutoff):
                memory.popitem(last=False)

    def release_waiting(self) -> None:
        """Answer every sample still waiting for its group with 503, and every later one (the server stops: no group
        can complete any more); groups being scored are left to finish."""
        self._refusal = error = RequestError(503, "the server is shutting down")
        for group in list(self.waiting.values()):
            if group.timer is not None:
                group.timer.cancel()
            for slot in group.slots:
                self._deliver(group, slot, error)
        self.waiting.clear()
        self.waiting_samples = 0

    async def stop(self) -> None:
        self.release_waiting()
        for task in list(self._tasks):
            task.cancel()


class ClientGone(Exception):
    """The client disconnected while its sample waited for the group."""
