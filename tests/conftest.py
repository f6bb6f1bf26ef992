"""Shared fixtures: the real LGG sample, tiny configs, and one briefly trained model that the
evaluation, export and prediction tests all reuse (trained once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tfunet.config import make_config
from tfunet.metadata import read_metadata
from tfunet.runtime import configure_tensorflow

configure_tensorflow()  # the tests run TensorFlow as the commands do (before it is imported)

LGG_DIR = Path(__file__).resolve().parents[2] / "shared" / "lgg" / "kaggle_3m"

# Small enough to train in seconds on two cores, large enough to learn non-trivial masks.
TINY = dict(image_size=32, base_filters=4, depth=2, num_patients=5, slices_per_patient=6,
            epochs=1, batch_size=8)
SMALL = dict(image_size=64, base_filters=8, depth=3, num_patients=6, slices_per_patient=10,
             epochs=4, batch_size=8, lr=3e-3)


# How far the probabilities of a model computing under a dtype policy may stray from those of
# its float32 twin (same weights), on the briefly trained test models. bfloat16 keeps ~3
# significant digits and float16 ~4 across the U-Net's layers; measured largest differences on
# the session model: bfloat16 0.049, float16 0.002. The bounds leave about 2x margin. A
# float32 model is compared with its own rebuild, which must agree to float rounding.
PROBABILITY_ATOL = {"float32": 1e-5, "mixed_float16": 5e-3, "mixed_bfloat16": 0.1}


@pytest.fixture(scope="session")
def probability_atol():
    """The one tolerance rule for comparing a `policy` model with a float32 reference:
    probability_atol(policy) -> the largest allowed |difference| of probabilities."""
    return PROBABILITY_ATOL.__getitem__


# Masks are compared by Dice, never by pixel agreement (which two empty masks pass), and only
# where the reference holds enough tumour for a Dice to mean something.
MIN_REFERENCE_PIXELS = 50


@pytest.fixture(scope="session")
def assert_masks_agree():
    """assert_masks_agree(mask, reference, min_dice): pooled Dice of `mask` against a reference
    with at least MIN_REFERENCE_PIXELS foreground pixels."""
    from tfunet.metrics import dice

    def check(mask, reference, min_dice: float) -> None:
        assert np.count_nonzero(reference) >= MIN_REFERENCE_PIXELS, (
            f"the reference mask has {np.count_nonzero(reference)} tumour pixels; a Dice of so few means little")
        assert dice(mask, reference, "pooled") >= min_dice

    return check


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
    path = config.model_dir / "best_model.keras"
    # The policy `auto` resolved to here (TFUNET_AUTO_PRECISION pins it in CI's two passes).
    policy = read_metadata(path)["policy"]
    return {"config": config, "model_path": path, "results": results, "policy": policy}


@pytest.fixture(scope="session")
def exported_model(trained_model, tmp_path_factory) -> dict:
    """`trained_model` through tfunet-export: {"keras", "saved_model", "tflite"} paths (float32 TFLite)."""
    from tfunet.export import export

    out = tmp_path_factory.mktemp("exported")
    written = export(trained_model["model_path"], saved_model=out / "serving" / "1",
                     tflite=out / "model_float32.tflite")
    return {"keras": trained_model["model_path"], "saved_model": Path(written["saved_model"]),
            "tflite": Path(written["tflite"])}


@pytest.fixture(scope="session")
def kill_when_written():
    """run(args, marker, env): start a command, SIGKILL it as soon as `marker` exists (e.g. a
    training backup: an epoch has finished), and check that the kill, not the end, stopped it."""
    import signal
    import subprocess
    import time

    def run(args, marker: Path, env: dict, timeout: float = 300) -> None:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            deadline = time.monotonic() + timeout
            while not marker.is_file() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert process.poll() is None, "the run ended before it could be killed"
            assert marker.is_file(), f"{marker} was not written within the time limit"
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL

    return run
