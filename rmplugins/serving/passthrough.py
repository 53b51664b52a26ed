"""For a model whose engine batches by itself (vLLM's scheduler, ``engine="vllm"``): each request's samples go
straight to the scorer in a worker thread, concurrently with the other requests', and the engine batches them
with everything else in flight. It has the :class:`~.batcher.Batcher`'s interface (``submit``, ``queued``) and
limits (queue size, per-request timeout), and no batching of its own: a second batcher in front of vLLM's would
only hold requests back."""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .metrics import Metrics
from .protocol import RequestError, refusal


class PassThrough:
    def __init__(self, run: Callable[[list], list], *, max_concurrent: int = 256, max_queue_items: int = 8192,
                 metrics: Metrics | None = None):
        if int(max_concurrent) < 1 or int(max_queue_items) < 1:
            raise ValueError("max_concurrent and max_queue_samples must be at least 1")
        self.run = run
        self.max_queue_items = int(max_queue_items)
        self.metrics = metrics or Metrics()
        self._queued = 0
        self._executor = ThreadPoolExecutor(max_workers=int(max_concurrent), thread_name_prefix="rmplugins-score")

    @property
    def queued(self) -> int:
        return self._queued

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, items: list, cost: int, timeout: float | None, shared: dict | None = None,
                     size: int | None = None, partial: bool = False) -> list:
        """``run(items)``, with one request's failing item raised for it, or left in its place with ``partial``
        (the Batcher's contract)."""
        size = len(items) if size is None else int(size)
        if self._queued + size > self.max_queue_items:
            raise RequestError(503, f"server overloaded: {self._queued} samples already in flight "
                                    f"(limit {self.max_queue_items}); retry later or add servers")
        self._queued += size
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            future = loop.run_in_executor(self._executor, self.run, items)
            results = await asyncio.wait_for(future, timeout)
        except (ValueError, TypeError) as err:  # the model refused the request's samples
            raise refusal(err) from None
        except asyncio.TimeoutError:
            raise RequestError(504, f"scoring did not finish within the per-request timeout of {timeout:g} s "
                                    "(server busy or a very long sample); retry or raise --request-timeout") from None
        finally:
            self._queued -= size
        self.metrics.batch(size, loop.time() - started)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None and not partial:
            raise refusal(failed)
        return results
