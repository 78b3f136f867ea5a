"""The SAM 2.1 checkpoints this service knows, as one table.

Adding a size means adding a row, not a branch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """One released SAM 2.1 checkpoint.

    Attributes:
        name: registry key, as users pass it (``model=sam2.1-hiera-tiny``).
        config: sam2's Hydra config name, resolved inside the installed ``sam2`` package.
        hf_repo: Hugging Face Hub repository holding the checkpoint.
        hf_file: file name of the checkpoint in that repository (also its name in the local cache).
        params_millions: parameter count, for sizing GPU shares and memory.
    """

    name: str
    config: str
    hf_repo: str
    hf_file: str
    params_millions: float


DEFAULT_MODEL = "sam2.1-hiera-base-plus"

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("sam2.1-hiera-tiny", "configs/sam2.1/sam2.1_hiera_t.yaml",
                  "facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt", 38.9),
        ModelSpec("sam2.1-hiera-small", "configs/sam2.1/sam2.1_hiera_s.yaml",
                  "facebook/sam2.1-hiera-small", "sam2.1_hiera_small.pt", 46.0),
        ModelSpec("sam2.1-hiera-base-plus", "configs/sam2.1/sam2.1_hiera_b+.yaml",
                  "facebook/sam2.1-hiera-base-plus", "sam2.1_hiera_base_plus.pt", 80.8),
        ModelSpec("sam2.1-hiera-large", "configs/sam2.1/sam2.1_hiera_l.yaml",
                  "facebook/sam2.1-hiera-large", "sam2.1_hiera_large.pt", 224.4),
    )
}


def get_spec(name: str) -> ModelSpec:
    """Look a model up by registry name; raises ``KeyError`` naming the known models."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
