"""What the model deployments share: model construction (in the replica, not at import), the one thread that runs a
replica's torch work, and idle memory trim."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import functools
import itertools
import os
import queue
import threading
from typing import Any, Callable, Optional

import torch

from models.loader import LoadedModel, load_model


def load_for_replica(model: str, checkpoint: str | None, device: str, dtype: str, torch_threads: int | None = None,
                     **kwargs) -> LoadedModel:
    """Load the model in a replica; on CPU use every core unless told otherwise.

    Ray sets OMP_NUM_THREADS from the replica's (often fractional) ``num_cpus``, which would leave a CPU replica
    on one thread; the CPU count the model really gets is ``torch_threads``.
    """
    loaded = load_model(model, checkpoint, device, dtype, **kwargs)
    if loaded.device.type == "cpu":
        torch.set_num_threads(torch_threads or os.cpu_count() or 1)
    return loaded


class TorchThread:
    """The one thread that runs all of a replica's torch work: model loading, every forward pass, every step.

    Why one: on CPU each thread that enters a parallel region gets its own OpenMP team, so work spread over
    asyncio's worker threads runs several teams on the same cores (slower for all of them). Jobs run one at a time,
    interactive ones (``INTERACTIVE``: a click, a session prompt) before queued bulk steps (``BULK``: automatic-mask
    batches, which run as many short steps), each priority in arrival order. No lock is held across a stream:
    concurrent streams take turns, one frame per job.
    """

    INTERACTIVE, BULK = 0, 1

    def __init__(self, name: str = "torch"):
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while True:
            _, _, future, fn = self._jobs.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # handed to the caller
                    future.set_exception(exc)

    def _submit(self, priority: int, fn: Callable[..., Any], args, kwargs) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((priority, next(self._order), future, functools.partial(fn, *args, **kwargs)))
        return future

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the torch thread and wait (for ``__init__``, before the event loop serves requests)."""
        return self._submit(self.INTERACTIVE, fn, args, kwargs).result()

    def submit(self, fn: Callable[..., Any], *args: Any, priority: int = 0, **kwargs: Any) -> "asyncio.Future":
        """Queue ``fn`` on the torch thread; an asyncio future of its result (shield it to outlive a cancel)."""
        return asyncio.wrap_future(self._submit(priority, fn, args, kwargs))

    async def run(self, fn: Callable[..., Any], *args: Any, priority: int = 0, **kwargs: Any) -> Any:
        """Run ``fn`` on the torch thread without blocking the event loop."""
        return await self.submit(fn, *args, priority=priority, **kwargs)


class IdleTrim:
    """Hands memory that glibc keeps after large frees back to the OS once a replica has been idle a moment.

    Model replicas allocate and free large activations on every call; glibc keeps the freed memory for reuse, so
    resident memory creeps up under mixed load without being in use. ``malloc_trim(0)`` releases it, but costs
    page faults on the next call's allocations, so it runs only after ``delay_s`` with no call in flight.
    A no-op where glibc's ``malloc_trim`` does not exist.

    Usage: ``async with self.idle_trim: ...`` around each call's work.
    """

    def __init__(self, delay_s: float = 1.0):
        self.delay_s = delay_s
        self.trims = 0
        self._busy = 0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._trim = _malloc_trim()

    async def __aenter__(self) -> None:
        self._busy += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def __aexit__(self, *exc) -> None:
        self._busy -= 1
        if self._busy == 0 and self._trim is not None:
            self._timer = asyncio.get_running_loop().call_later(self.delay_s, self._start_trim)

    def _start_trim(self) -> None:
        self._timer = None
        if self._busy == 0:
            self.trims += 1
            asyncio.get_running_loop().run_in_executor(None, self._trim, 0)


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
