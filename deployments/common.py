"""Model construction shared by the GPU deployments (kept out of __init__ so it runs in the replica, not at import)."""

from __future__ import annotations

import os

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
