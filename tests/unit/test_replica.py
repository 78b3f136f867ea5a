"""sam2_serve.deployments.replica: the one torch thread per replica and the idle memory trim (no Ray needed)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sam2_serve.deployments.replica import TorchThread


def test_torch_thread_runs_every_call_on_one_thread_in_order():
    torch_thread = TorchThread()
    order: list[int] = []

    def work(i: int) -> int:
        order.append(i)
        return threading.get_ident()

    loader_ident = torch_thread.call(threading.get_ident)  # what __init__ does with model loading

    async def main():
        return await asyncio.gather(*[torch_thread.run(work, i) for i in range(8)])

    idents = asyncio.run(main())
    assert set(idents) == {loader_ident} and loader_ident != threading.get_ident()
    assert order == list(range(8))  # queued in arrival order: streams interleave step by step


def test_idle_trim_runs_only_after_the_thread_is_idle():
    import time

    torch_thread = TorchThread(trim_after_s=0.1)
    assert torch_thread._trim is not None, "glibc's malloc_trim should be found on Linux"
    time.sleep(0.3)
    assert torch_thread.trims == 0  # nothing ran yet: nothing to hand back
    torch_thread.call(time.sleep, 0.3)  # a long job: no trim while it runs
    assert torch_thread.trims == 0
    for _ in range(5):  # jobs closer together than trim_after_s keep postponing it
        time.sleep(0.03)
        torch_thread.call(lambda: None)
    assert torch_thread.trims == 0
    time.sleep(0.5)
    assert torch_thread.trims == 1  # once per idle spell, not again while still idle
    torch_thread.call(lambda: None)
    time.sleep(0.3)
    assert torch_thread.trims == 2
    assert TorchThread(trim_after_s=None)._trim is None


def test_torch_thread_runs_interactive_jobs_before_queued_bulk_steps():
    torch_thread = TorchThread()
    gate, order = threading.Event(), []

    async def main():
        busy = torch_thread.submit(gate.wait)  # the thread is in the middle of some step
        bulk = [torch_thread.submit(order.append, f"amg-step-{i}", priority=TorchThread.BULK) for i in range(3)]
        click = torch_thread.submit(order.append, "click")  # arrives last, interactive by default
        gate.set()
        await asyncio.gather(busy, click, *bulk)

    asyncio.run(main())
    assert order == ["click", "amg-step-0", "amg-step-1", "amg-step-2"]


def test_torch_thread_hands_exceptions_to_the_caller():
    torch_thread = TorchThread()

    async def main():
        return await torch_thread.run(lambda: 1 / 0)

    with pytest.raises(ZeroDivisionError):
        asyncio.run(main())
    assert torch_thread.call(lambda: "still working") == "still working"


# ---- health: what Serve's check_health of the model replicas asks of their torch thread ----------------------------


def test_health_fails_while_a_job_is_stuck_past_the_bound_and_recovers_when_it_ends():
    from sam2_serve.deployments.replica import TorchThreadUnhealthy

    torch_thread = TorchThread(trim_after_s=None)
    torch_thread.check_health(0.05)  # idle: healthy, whatever the bound
    assert torch_thread.busy_s() == 0.0
    gate, started = threading.Event(), threading.Event()
    done = torch_thread._submit(TorchThread.INTERACTIVE, lambda: (started.set(), gate.wait()), (), {})
    started.wait()
    torch_thread.check_health(60.0)  # busy, but not for longer than the bound
    torch_thread.check_health(None)  # no bound: never stuck
    _wait_until(lambda: torch_thread.busy_s() > 0.1)
    with pytest.raises(TorchThreadUnhealthy, match=r"current job for \d+\.\d s, more than stuck_after_s=0\.1 s"):
        torch_thread.check_health(0.1)  # wedged: the job blocks on an Event nobody sets
    gate.set()
    done.result()
    torch_thread.check_health(0.1)  # the job finished: healthy again, and the thread still works
    assert torch_thread.busy_s() == 0.0
    assert torch_thread.call(lambda: 7) == 7


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is on purpose
def test_health_fails_when_the_thread_died():
    from sam2_serve.deployments.replica import TorchThreadUnhealthy

    torch_thread = TorchThread(trim_after_s=0.01)
    torch_thread.check_health(1.0)

    def broken_trim(_):  # a bug in the thread's own loop (not in a job, whose errors go to its caller)
        raise RuntimeError("boom")

    torch_thread._trim = broken_trim
    torch_thread.call(lambda: None)  # the loop now waits trim_after_s, then calls the broken trim and dies
    _wait_until(lambda: not torch_thread._thread.is_alive())
    with pytest.raises(TorchThreadUnhealthy, match="has died"):
        torch_thread.check_health(None)


def _wait_until(condition) -> None:
    """Poll ``condition`` (no deadline of its own: pytest-timeout bounds a test that would hang)."""
    import time

    while not condition():
        time.sleep(0.01)
