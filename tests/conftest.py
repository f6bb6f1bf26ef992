"""Shared fixtures: the real LGG sample, tiny configs, and one briefly trained model that the
evaluation, export and prediction tests all reuse (trained once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tfunet.config import make_config

LGG_DIR = Path(__file__).resolve().parents[2] / "shared" / "lgg" / "kaggle_3m"

# Small enough to train in seconds on two cores, large enough to learn non-trivial masks.
TINY = dict(image_size=32, base_filters=4, depth=2, num_patients=5, slices_per_patient=6,
            epochs=1, batch_size=8)
SMALL = dict(image_size=64, base_filters=8, depth=3, num_patients=6, slices_per_patient=10,
             epochs=4, batch_size=8, lr=3e-3)


@pytest.fixture(scope="session")
def lgg_dir() -> Path:
    """The 24-patient LGG sample in ../shared; required on CI, skipped elsewhere if absent."""
    if not LGG_DIR.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the shared LGG sample is missing: {LGG_DIR}")
        pytest.skip(f"shared LGG sample not found at {LGG_DIR}")
    return LGG_DIR


@pytest.fixture
def tiny_config(tmp_path):
    """A config that trains in a few seconds, writing under tmp_path."""
    return make_config({**TINY, "output_dir": str(tmp_path)})


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> dict:
    """A briefly trained small synthetic model: {"config", "model_path", "results"}."""
    from tfunet.train import train

    out = tmp_path_factory.mktemp("trained")
    config = make_config({**SMALL, "output_dir": str(out)})
    results = train(config, verbose=0)
    return {"config": config, "model_path": config.model_dir / "best_model.keras", "results": results}


@pytest.fixture(scope="session")
def exported_model(trained_model, tmp_path_factory) -> dict:
    """`trained_model` through tfunet-export: {"keras", "saved_model", "tflite"} paths (float32 TFLite)."""
    from tfunet.export import export

    out = tmp_path_factory.mktemp("exported")
    written = export(trained_model["model_path"], saved_model=out / "serving" / "1",
                     tflite=out / "model_float32.tflite")
    return {"keras": trained_model["model_path"], "saved_model": Path(written["saved_model"]),
            "tflite": Path(written["tflite"])}
