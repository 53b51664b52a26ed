"""A dynamic batcher for an asyncio server: concurrent requests' items run together in one call of a function,
in a worker thread. It knows nothing of what the items are (the server gives it :class:`~.scorer.RewardScorer`).

The first waiting request opens a batch; more are taken for up to ``max_wait_ms`` (only when the previous batch
held several requests, so a lone client never waits) or until ``max_batch_size`` items or ``max_batch_tokens``
(the requests' own cost estimates; a part several requests share, such as the prompt of a rollout's n samples,
counted once) are reached. One batch runs at a time, so requests that arrive meanwhile form
the next batch. ``max_batch_size=1`` gives the one-at-a-time path.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..inputs import split_sizes
from .metrics import Metrics
from .protocol import RequestError, refusal

logger = logging.getLogger("rmplugins.server")


@dataclass
class Pending:
    """One request waiting: its items, the future its handler awaits, and its cost estimate: its own ``cost``
    plus ``shared`` parts (key -> cost) that count once in a batch however many requests bring them."""

    items: list
    future: asyncio.Future | None
    cost: int = 0
    shared: dict = field(default_factory=dict)
    size: int = 0  # samples it holds (a group job is one item of several samples)
    partial: bool = False  # an item that fails leaves its exception in place (the others answered), not the request

    def cost_beside(self, seen: dict) -> int:
        """Its cost in a batch already holding the shared parts in ``seen`` (which it then adds to)."""
        new = {k: c for k, c in self.shared.items() if k not in seen}
        seen.update(new)
        return self.cost + sum(new.values())


class Batcher:
    """``await batcher.submit(items, cost, timeout)`` -> ``run(items)`` results for those items, computed with
    other requests' items in one ``run`` call. ``run`` returns one result per item or raises; a batch that raises
    is cut in halves and each half retried, so a failing request is found in O(log n) calls while the others are
    still computed in a few large ones. The failing request's future gets the exception."""

    def __init__(self, run: Callable[[list], list], *, max_batch_size: int = 64, max_batch_tokens: int = 32768,
                 max_wait_ms: float = 5.0, max_queue_items: int = 8192, metrics: Metrics | None = None):
        if int(max_batch_size) < 1 or int(max_batch_tokens) < 1 or float(max_wait_ms) < 0 or int(max_queue_items) < 1:
            raise ValueError("max_batch_size, max_batch_tokens and max_queue_samples must be at least 1, and "
                             "max_wait_ms at least 0")
        self.run = run
        self.max_batch_size = int(max_batch_size)
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_wait = float(max_wait_ms) / 1000
        self.max_queue_items = int(max_queue_items)
        self.metrics = metrics or Metrics()
        self._queue: asyncio.Queue | None = None
        self._queued = 0
        self._task: asyncio.Task | None = None
        self._carry: Pending | None = None
        self._last_batch_requests = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rmplugins-score")

    @property
    def queued(self) -> int:
        return self._queued

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="rmplugins-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, items: list, cost: int, timeout: float | None, shared: dict | None = None,
                     size: int | None = None, partial: bool = False) -> list:
        """``run(items)`` for these items, batched with other requests'; ``size``: the samples they hold, for
        the batch and queue limits (default: one per item); ``partial``: an item ``run`` cannot process gets its
        exception in its place in the answer, instead of failing the request."""
        size = len(items) if size is None else int(size)
        if self._queue is None:
            raise RequestError(503, "the scoring queue is not running yet; retry in a moment")
        if self._queued + size > self.max_queue_items:
            raise RequestError(503, f"server overloaded: {self._queued} samples already queued "
                                    f"(limit {self.max_queue_items}); retry later or add servers")
        future = asyncio.get_running_loop().create_future()
        self._queued += size
        await self._queue.put(Pending(items, future, cost, shared or {}, size, partial))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            future.cancel()
            raise RequestError(504, f"scoring did not finish within the per-request timeout of {timeout:g} s "
                                    "(server busy or a very long sample); retry or raise --request-timeout")

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(loop)
            live = [p for p in batch if not p.future.done()]  # drop requests that timed out
            if not live:
                continue
            started = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(self._executor, self.run_batch, live)
            except Exception as err:  # noqa: BLE001 - keep the loop alive whatever happens
                logger.exception("batch failed")
                outcomes = [RequestError(500, f"scoring failed: {type(err).__name__}: {err}")] * len(live)
            self.metrics.batch(sum(p.size for p in live), time.perf_counter() - started)
            for pending, outcome in zip(live, outcomes):
                if pending.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    pending.future.set_exception(refusal(outcome))
                else:
                    pending.future.set_result(outcome)

    async def _collect(self, loop) -> list[Pending]:
        first, self._carry = (self._carry or await self._queue.get()), None
        seen: dict = {}
        batch, size, tokens = [first], first.size, first.cost_beside(seen)
        # Wait for company only under load (the last batch held several requests): a lone client is served at
        # once; under load, requests that arrive while a batch runs form the next one anyway.
        deadline = loop.time() + (self.max_wait if self._last_batch_requests > 1 else 0.0)
        while size < self.max_batch_size and tokens < self.max_batch_tokens:
            try:
                pending = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if size + pending.size > self.max_batch_size:
                self._carry = pending  # it opens the next batch
                break
            batch.append(pending)
            size += pending.size
            tokens += pending.cost_beside(seen)
        self._queued -= size
        self._last_batch_requests = len(batch)
        return batch

    def run_batch(self, batch: list[Pending]) -> list[Any]:
        """(Worker thread.) One outcome per request: its results, or an exception. ``run`` reports an item it
        cannot process by returning an exception in its place: that request gets it, the others their results.
        Should ``run`` raise for the whole batch instead, the batch is bisected to find the request."""
        try:
            results = self.run([item for p in batch for item in p.items])
        except Exception as err:  # noqa: BLE001 - handed to the request, or found by bisection
            if len(batch) == 1:
                return [err]
            half = len(batch) // 2
            return self.run_batch(batch[:half]) + self.run_batch(batch[half:])
        outcomes = []
        for pending, part in zip(batch, split_sizes(results, [len(p.items) for p in batch])):
            failed = next((r for r in part if isinstance(r, BaseException)), None)
            outcomes.append(part if failed is None or pending.partial else failed)
        return outcomes
