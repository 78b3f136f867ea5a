"""Shared pieces of the benchmarks: checkpoints, replica memory, timing and table printing."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import psutil

from sam2_serve.testing import DATA, cached_checkpoint  # noqa: F401 (DATA: the benchmarks' inputs)


def bench_checkpoint(model: str, seed: int = 0) -> Path:
    """A seeded random checkpoint of ``model`` under /tmp (real weights cannot be downloaded here)."""
    return cached_checkpoint(model, Path(os.environ.get("SAM2_SERVE_BENCH_DIR", "/tmp/sam2-serve-bench")), seed)


def machine() -> str:
    from sam2_serve.models.fast_encoder import cpu_model_name

    return f"{cpu_model_name()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, no GPU"


def replica_rss_mib() -> dict[str, float]:
    """Resident memory of every Serve replica process on this machine, by deployment name."""
    out: dict[str, float] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if "ServeReplica:" in cmd:
            # "ray::ServeReplica:app:Deployment", with ".method" appended while the replica is busy
            name = cmd.split("ServeReplica:", 1)[1].split()[0].split(".", 1)[0]
            try:
                out[name] = out.get(name, 0.0) + proc.memory_info().rss / 2**20
            except psutil.Error:
                pass
    return out


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def p50(xs) -> float:
    return statistics.median(xs)


def table(rows: list[tuple], header: tuple) -> str:
    cols = list(zip(header, *rows))
    widths = [max(len(str(c)) for c in col) for col in cols]
    fmt = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)])
