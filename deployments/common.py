"""What the model deployments share: model construction (in the replica, not at import), the one thread that runs a
replica's torch work, and idle memory trim."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
from concurrent.futures import ThreadPoolExecutor
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
    asyncio's worker threads runs several teams on the same cores; and a thread other than the one that did the
    first heavy compute ran a base-plus decoder pass ~15 % slower (measured: 60 ms here vs 70-80 ms in a replica
    using ``asyncio.to_thread``). Calls queue here in arrival order, each one step (a batch, a frame), so
    concurrent requests and streams interleave step by step; no lock is held across a stream.
    """

    def __init__(self, name: str = "torch"):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the torch thread and wait (for ``__init__``, before the event loop serves requests)."""
        return self._executor.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the torch thread without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "asyncio.Future":
        """Like ``run``, as a future (for callers that shield it from cancellation)."""
        return asyncio.ensure_future(self.run(fn, *args, **kwargs))


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
