"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a test module of tiny convolutions: faster and steadier than two on a
    busy 2-core machine. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def aitex_root() -> Path:
    """The real AITEX dev split: $DEFECTFILL_AITEX, else <repo>/../shared/data/aitex; skip if absent."""
    root = Path(os.environ.get("DEFECTFILL_AITEX") or REPO_ROOT.parent / "shared" / "data" / "aitex")
    if not (root / "images").is_dir():
        pytest.skip(f"AITEX data not found at {root} (set DEFECTFILL_AITEX to its folder)")
    return root


@pytest.fixture(scope="session")
def woven_root(tmp_path_factory) -> Path:
    """A small procedural woven-fabric dataset (6 defect + 4 good images, 128x512)."""
    from defectfill.data import make_woven_dataset

    return make_woven_dataset(tmp_path_factory.mktemp("woven") / "data", height=128, width=512, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random SD-2 inpainting pipeline written in diffusers format (loaded like a real one)."""
    from defectfill.diffusion.models.tiny import make_tiny_pipeline

    return make_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd2-inpainting")


@pytest.fixture(scope="session")
def reference_root(request) -> Path:
    """Reference defects for training tests: real AITEX when present, else the procedural set."""
    root = Path(os.environ.get("DEFECTFILL_AITEX") or REPO_ROOT.parent / "shared" / "data" / "aitex")
    if (root / "images").is_dir():
        return root
    return request.getfixturevalue("woven_root")
