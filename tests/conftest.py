"""Fixtures shared by unit and integration tests: data files and test-written checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.checkpoints import write_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SAM2_SERVE_TEST_DATA", ROOT.parent / "shared" / "data"))


def _data(rel: str) -> Path:
    path = DATA / rel
    if not path.is_file():
        pytest.skip(f"test data {path} not found: set SAM2_SERVE_TEST_DATA to a folder with images/ and videos/")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def truck_path() -> Path:
    return _data("images/truck.jpg")


@pytest.fixture(scope="session")
def groceries_path() -> Path:
    return _data("images/groceries.jpg")


@pytest.fixture(scope="session")
def bedroom_path() -> Path:
    return _data("videos/bedroom.mp4")


@pytest.fixture(scope="session")
def groceries_rgb(groceries_path) -> np.ndarray:
    return np.asarray(Image.open(groceries_path).convert("RGB"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """sam2.1-hiera-tiny with seeded random weights, saved as ``{"model": state_dict}``."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", "sam2.1-hiera-tiny", seed=0)
