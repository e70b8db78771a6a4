"""Micro-batching: image queries that arrive within a few milliseconds of each other share
one forward pass and one search call.

A request announces itself on arrival (``arriving``), before its upload is read and
decoded. The first query of a batch waits up to ``window_s`` for the queries announced
but not yet queued, up to ``max_batch``; with none announced it runs at once, so a lone
query pays no window. The batch runs in one worker thread, so the event loop keeps
accepting requests, and those that arrive meanwhile form the next batch: under load,
batches grow by themselves to what arrives during one run. Once no query has come for
``idle_s`` after a batch, ``on_idle`` runs once in the batch thread (the service gives
freed memory back to the system there, not after every batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


@dataclass
class BatchStats:
    """Batches run so far; per batch size, the seconds of its runs (forward pass + search, in the
    server itself: what a request costs without HTTP, decoding and queueing)."""

    batches: int = 0
    images: int = 0
    largest: int = 0
    run_seconds: float = 0.0
    runs: dict[int, list[float]] = field(default_factory=dict)

    def add(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.images += size
        self.largest = max(self.largest, size)
        self.run_seconds += seconds
        self.runs.setdefault(size, []).append(seconds)
        del self.runs[size][:-1000]  # the most recent thousand per size

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "images": self.images, "largest": self.largest,
                "mean_size": self.images / self.batches if self.batches else 0.0,
                "run_seconds": round(self.run_seconds, 4),
                "sizes": {str(k): len(v) for k, v in sorted(self.runs.items())},
                "run_ms_by_size": {str(k): {"median": round(1000 * statistics.median(v), 3),
                                            "total": round(1000 * sum(v), 3)} for k, v in sorted(self.runs.items())}}


class MicroBatcher:
    """``await submit(item, k)`` -> that item's result from ``run(items, k_max)``, which gets
    every item of a batch at once and returns one result per item, in order."""

    def __init__(self, run: Callable[[Sequence[Any], int], list[Any]], window_s: float = 0.005,
                 max_batch: int = 32, on_idle: Callable[[], None] | None = None, idle_s: float = 1.0):
        self.run, self.window_s, self.max_batch = run, window_s, max_batch
        self.on_idle, self.idle_s = on_idle, idle_s
        self.idle_calls = 0
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._queued: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.announced = 0  # requests on their way (reading, decoding) that will queue a query
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")

    def in_batch_thread(self, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)`` in the thread that runs the batches (blocking; before ``start``)."""
        return self._executor.submit(call, *args).result()

    async def alone(self, call: Callable[..., Any], *args: Any) -> Any:
        """``await`` ``call(*args)`` run in the batch thread between batches (the CLIP text tower:
        torch called from one thread only)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    def start(self) -> None:
        self._queue, self._queued = asyncio.Queue(), asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def arriving(self):
        """Announce a query for the block (reading and decoding it): a batch waits for it."""
        self.announced += 1
        try:
            yield
        finally:
            self.announced -= 1

    def enqueue(self, item: Any, k: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, k, future))
        self._queued.set()
        return future

    async def submit(self, item: Any, k: int) -> Any:
        return await self.enqueue(item, k)

    async def _first(self) -> tuple[Any, int, asyncio.Future]:
        """The next query; after ``idle_s`` without one, ``on_idle`` (once: then it waits for a query)."""
        if self.on_idle is not None and self._queue.empty():
            self._queued.clear()
            try:
                await asyncio.wait_for(self._queued.wait(), self.idle_s)
            except asyncio.TimeoutError:
                await asyncio.get_running_loop().run_in_executor(self._executor, self.on_idle)
                self.idle_calls += 1
        return await self._queue.get()

    async def _collect(self) -> list[tuple[Any, int, asyncio.Future]]:
        batch = [await self._first()]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if not self.announced or left <= 0:
                break
            self._queued.clear()
            try:  # an Event, not queue.get(): cancelling a get on timeout could drop a query
                await asyncio.wait_for(self._queued.wait(), left)
            except asyncio.TimeoutError:
                break
        return batch

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            waiting = [entry for entry in batch if not entry[2].cancelled()]  # clients that went away
            if not waiting:
                continue
            items, ks = [entry[0] for entry in waiting], [entry[1] for entry in waiting]
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run, items, max(ks))
            except Exception as error:  # every query of the batch gets the error; the server goes on
                for _, _, future in waiting:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.stats.add(len(items), time.perf_counter() - started)
            for (_, _, future), result in zip(waiting, results):
                if not future.done():
                    future.set_result(result)
