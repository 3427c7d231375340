"""Batched forecaster sampling across resources that share a model.

With hundreds of resources on one model, one forward pass per resource wastes the interpreter and the
BLAS calls; `BatchSampler.sample` collects the requests that arrive within `window_s` (or until
`max_batch`) for the same model and runs them as one `Forecaster.sample` call on a `[B, L, N]` batch in a
single worker thread, so the event loop keeps serving kopf and the probes while the model runs.
The batch is drawn from one seed derived from its members' seeds: a batch is reproducible, while one
resource's draws depend on which others shared its batch, which is harmless for Monte Carlo decisions.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from harmony.model.base import Forecaster

__all__ = ["BatchSampler"]


@dataclass
class _Request:
    history: NDArray[np.float64]
    last_time_ns: int
    seed: int
    future: asyncio.Future[NDArray[np.float64]]


@dataclass
class _Queue:
    forecaster: Forecaster
    items: list[_Request] = field(default_factory=list)
    flusher: asyncio.Task[None] | None = None


class BatchSampler:
    def __init__(self, num_samples: int = 100, *, window_s: float = 0.005, max_batch: int = 256) -> None:
        self.num_samples = num_samples
        self.window_s = window_s
        self.max_batch = max_batch
        self._queues: dict[int, _Queue] = {}
        # One thread: torch already parallelises inside a call; two calls at once would only contend.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="harmony-sample")
        self.batches = 0
        self.last_batch_size = 0

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def sample(
        self, forecaster: Forecaster, history: NDArray[np.float64], last_time_s: float, seed: int
    ) -> NDArray[np.float64]:
        """Draws `[num_samples, horizon, targets]` for one history `[lookback, indicators]`."""
        loop = asyncio.get_running_loop()
        key = id(forecaster)
        queue = self._queues.get(key)
        if queue is None or queue.forecaster is not forecaster:
            queue = self._queues[key] = _Queue(forecaster)
        request = _Request(history, int(last_time_s * 1e9), seed, loop.create_future())
        queue.items.append(request)
        if len(queue.items) >= self.max_batch:
            self._flush(key)
        elif queue.flusher is None:
            queue.flusher = loop.create_task(self._flush_later(key))
        return await request.future

    async def _flush_later(self, key: int) -> None:
        await asyncio.sleep(self.window_s)
        self._flush(key)

    def _flush(self, key: int) -> None:
        queue = self._queues.get(key)
        if queue is None or not queue.items:
            return
        items, queue.items = queue.items, []
        if queue.flusher is not None and queue.flusher is not asyncio.current_task():
            queue.flusher.cancel()
        queue.flusher = None
        asyncio.get_running_loop().create_task(self._run(queue.forecaster, items))

    async def _run(self, forecaster: Forecaster, items: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        try:
            draws = await loop.run_in_executor(self._executor, self._compute, forecaster, items)
            self.batches += 1
            self.last_batch_size = len(items)
        except Exception as exc:
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, d in zip(items, draws, strict=True):
            if not item.future.done():
                item.future.set_result(d)

    def _compute(self, forecaster: Forecaster, items: list[_Request]) -> list[NDArray[np.float64]]:
        histories = np.stack([i.history for i in items]).astype(np.float32)
        times = np.array([i.last_time_ns for i in items], dtype=np.int64)
        seed = int(np.bitwise_xor.reduce(np.array([i.seed for i in items], dtype=np.int64)) & 0x7FFFFFFF)
        out = forecaster.sample(histories, self.num_samples, times, seed=seed)
        return [np.asarray(out[k], dtype=np.float64) for k in range(len(items))]
