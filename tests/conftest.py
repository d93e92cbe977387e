import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHOP3K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "shop3k" / "manifest.jsonl"


@pytest.fixture(scope="session")
def synth_catalog(tmp_path_factory) -> Path:
    """Manifest of 6 generated products with real media files (PNG, MP4+AAC, WAV)."""
    from core.data.synth import make_catalog

    return make_catalog(tmp_path_factory.mktemp("synth"), n=6, video_seconds=2.0, audio_seconds=2.0)


@pytest.fixture(scope="session")
def featurizer():
    from core.data.featurize import Featurizer

    return Featurizer(device="cpu")


@pytest.fixture(scope="session")
def shop3k_manifest() -> Path:
    if not SHOP3K.is_file():
        pytest.skip(f"shop3k data not found at {SHOP3K} (the shared data folder is not beside this checkout)")
    return SHOP3K


@pytest.fixture(scope="module")
def setup(featurizer):
    """The tiny checkpoint + catalog of generated products (tests/app_fixtures.py); test_app overrides it."""
    from app_fixtures import tiny_setup

    return tiny_setup(featurizer)


@pytest.fixture(scope="module")
def model(setup):
    from app_fixtures import load_tiny_model

    return load_tiny_model(setup)
