"""Fixtures shared by unit and integration tests: the shipped test media and test-written checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2_serve.testing import DATA, data, write_checkpoint


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def truck_path() -> Path:
    return data("images/truck.jpg")


@pytest.fixture(scope="session")
def groceries_path() -> Path:
    return data("images/groceries.jpg")


@pytest.fixture(scope="session")
def bedroom_path() -> Path:
    return data("videos/bedroom.mp4")


@pytest.fixture(scope="session")
def groceries_rgb(groceries_path) -> np.ndarray:
    return np.asarray(Image.open(groceries_path).convert("RGB"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """sam2.1-hiera-tiny with seeded random weights, saved as ``{"model": state_dict}``."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", "sam2.1-hiera-tiny", seed=0)
