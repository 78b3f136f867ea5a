"""What the model deployments share: model construction (in the replica, not at import) and the one thread that
runs a replica's torch work (and hands freed memory back when idle, and tells Serve's health check when it is stuck)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import functools
import itertools
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Optional

import torch

from sam2_serve.models.loader import LoadedModel, load_model

logger = logging.getLogger("ray.serve")


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

    Idle trim: jobs allocate and free large activations; glibc keeps freed memory for reuse, so resident memory
    creeps up under mixed load without being in use. Once the thread has had no job for ``trim_after_s``, it calls
    ``malloc_trim(0)`` itself (once per idle spell), which hands that memory back; the next job pays some page
    faults. None, or a libc without ``malloc_trim``, turns it off.

    Health: ``check_health(stuck_after_s)`` raises ``TorchThreadUnhealthy`` when the thread has died or its current
    job has run longer than ``stuck_after_s`` seconds (a hung CUDA call, a deadlock): the model deployments call it
    from Serve's periodic ``check_health``, so Serve replaces such a replica instead of routing requests to it.
    """

    INTERACTIVE, BULK = 0, 1

    def __init__(self, name: str = "torch", trim_after_s: Optional[float] = 1.0):
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._trim = _malloc_trim() if trim_after_s is not None else None
        self._trim_after_s = trim_after_s
        self.trims = 0
        self._job_started: Optional[float] = None  # time.monotonic() when the running job began; None when idle
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        trimmed = True  # nothing to hand back before the first job
        while True:
            try:
                _, _, future, fn = self._jobs.get(timeout=None if trimmed or self._trim is None
                                                  else self._trim_after_s)
            except queue.Empty:
                self._trim(0)
                self.trims += 1
                trimmed = True
                continue
            trimmed = False
            if future.set_running_or_notify_cancel():
                self._job_started = time.monotonic()
                try:
                    future.set_result(fn())
                except BaseException as exc:  # handed to the caller
                    future.set_exception(exc)
                finally:
                    self._job_started = None

    def _submit(self, priority: int, fn: Callable[..., Any], args, kwargs) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((priority, next(self._order), future, functools.partial(fn, *args, **kwargs)))
        return future

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the torch thread and wait (for ``__init__``, before the event loop serves requests)."""
        return self._submit(self.INTERACTIVE, fn, args, kwargs).result()

    def submit(self, fn: Callable[..., Any], *args: Any, priority: int = INTERACTIVE,
               **kwargs: Any) -> "asyncio.Future":
        """Queue ``fn`` on the torch thread; an asyncio future of its result (shield it to outlive a cancel)."""
        return asyncio.wrap_future(self._submit(priority, fn, args, kwargs))

    async def run(self, fn: Callable[..., Any], *args: Any, priority: int = INTERACTIVE, **kwargs: Any) -> Any:
        """Run ``fn`` on the torch thread without blocking the event loop."""
        return await self.submit(fn, *args, priority=priority, **kwargs)

    def busy_s(self) -> float:
        """Seconds the running job has taken so far; 0 when the thread is idle."""
        started = self._job_started
        return 0.0 if started is None else time.monotonic() - started

    def check_health(self, stuck_after_s: Optional[float]) -> None:
        """Raise ``TorchThreadUnhealthy`` (and log why) when the thread is dead, or its current job has run longer
        than ``stuck_after_s`` seconds (None: no bound). Cheap: reads two fields, never waits for the thread."""
        if not self._thread.is_alive():
            problem = f"the torch thread {self._thread.name!r} has died: no model work can run on this replica"
        elif stuck_after_s is not None and self.busy_s() > stuck_after_s:
            problem = (f"the torch thread has run its current job for {self.busy_s():.1f} s, more than "
                       f"stuck_after_s={stuck_after_s:g} s: it is stuck (or the bound is too low for this work)")
        else:
            return
        logger.warning("health check failed: %s", problem)
        raise TorchThreadUnhealthy(problem)


class TorchThreadUnhealthy(RuntimeError):
    """Raised by ``check_health`` for Serve's replica health check (not a request error: no client sees it)."""


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
