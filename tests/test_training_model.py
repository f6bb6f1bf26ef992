"""Deep supervision and the resolution schedule: what trains differs from what is saved."""

import csv
import math
import os
import re
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfunet.config import make_config
from tfunet.export import export
from tfunet.losses import BCEDiceLoss
from tfunet.metadata import read_metadata
from tfunet.model import UNet, unet_args
from tfunet.train import build_training_model, compile_model, make_schedule, train
from tfunet.training_model import TrainingUNet, aux_weights

ARGS = dict(image_size=32, base_filters=4, depth=3, batch_norm=True, dropout=0.0, upsampling="transpose")
# A run with both levers: 2 epochs at 16x16, then 1 at 32x32 on a fresh cosine, with auxiliary heads.
RUN = dict(image_size=32, base_filters=4, depth=3, num_patients=5, slices_per_patient=6, epochs=3,
           batch_size=8, deep_supervision=True, coarse_size=16, coarse_epochs=2, fine_lr=5e-4)


def test_aux_weights_halve_per_level_and_sum_to_one():
    assert aux_weights() == pytest.approx([4 / 7, 2 / 7, 1 / 7])


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    y = np.zeros((2, 32, 32, 1), "float32")
    y[:, 8:20, 10:22] = 1.0
    return x, y


def test_the_saved_unet_computes_the_main_output_of_training(batch):
    trainer = TrainingUNet(ARGS, deep_supervision=True)
    main, half, quarter = trainer(batch[0], training=False)
    assert (half.shape[1], quarter.shape[1]) == (16, 8)
    saved = trainer.inference_model()
    assert isinstance(saved, UNet) and len(saved.outputs) == 1
    np.testing.assert_allclose(saved(batch[0], training=False), main, atol=1e-6)
    assert trainer(batch[0][:, :16, :16], training=False)[0].shape[1] == 16  # any size trains


def test_auxiliary_losses_count_in_training_only(batch):
    x, y = batch
    config = make_config({**RUN, "output_dir": "."})
    trainer = compile_model(build_training_model(config), config, steps_per_epoch=1)
    y_pred = trainer(x, training=False)
    loss = BCEDiceLoss()
    main = float(loss(y, y_pred[0]))
    assert float(trainer.compute_loss(x, y, y_pred, training=False)) == pytest.approx(main, rel=1e-6)
    pooled = [tf.nn.avg_pool2d(y, k, k, "VALID") for k in (2, 4)]
    expected = sum(w * float(loss(t, p)) for w, t, p in zip(aux_weights(), [y, *pooled], y_pred))
    assert float(trainer.compute_loss(x, y, y_pred, training=True)) == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def scheduled_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scheduled")
    config = make_config({**RUN, "output_dir": str(out)})
    results = train(config, verbose=0)
    return config, results


def test_heads_are_absent_from_the_saved_and_exported_models(scheduled_run, tmp_path):
    config, results = scheduled_run
    path = results["best_model"]
    model = keras.saving.load_model(path)
    assert model.get_config() == UNet(**unet_args(config), policy=model.policy).get_config()
    assert not [layer.name for layer in model.layers if "aux" in layer.name]
    assert read_metadata(path)["config"]["deep_supervision"] is True
    written = export(path, saved_model=tmp_path / "serving", tflite=tmp_path / "model.tflite")
    loaded = tf.saved_model.load(written["saved_model"])
    serving = loaded.signatures["serving_default"]
    assert len(serving.variables) == len(model.weights)  # those of the plain U-Net, nothing more
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=written["tflite"])
    assert [d["shape"].tolist() for d in interpreter.get_output_details()] == [[1, 32, 32, 1]]


def test_the_schedule_runs_every_epoch_once_on_one_learning_rate_schedule(scheduled_run):
    config, results = scheduled_run
    assert results["epochs"] == config.epochs
    with (config.log_dir / "train_log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(config.epochs))
    steps = math.ceil(_train_slices(config) / config.batch_size)
    schedule = make_schedule(config, steps)
    for row in rows:  # the coarse stage's optimizer state carries into the fine one
        assert float(row["learning_rate"]) == pytest.approx(float(schedule((int(row["epoch"]) + 1) * steps)), abs=1e-7)
    # The coarse stage's cosine ran out; the full-size stage starts again from --fine-lr.
    assert float(rows[config.coarse_epochs - 1]["learning_rate"]) == pytest.approx(config.fine_lr)
    assert not (config.log_dir / "backup").exists()
    # The saved model comes from the serving size's epochs, never from a coarse one.
    assert read_metadata(results["best_model"])["best"]["epoch"] > config.coarse_epochs


def _train_slices(config) -> int:
    from tfunet.data.sources import load_splits

    return load_splits(config).num_slices("train")


def test_kill_in_the_coarse_stage_resumes_through_both_stages(tmp_path, kill_when_written):
    args = ["tfunet-train", "--deterministic", "--output-dir", str(tmp_path), "--deep-supervision"]
    for key, value in RUN.items():
        if key != "deep_supervision":
            args += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    backup = tmp_path / "logs" / "backup" / "training_metadata.json"
    kill_when_written(args, backup, env)
    second = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.search(r"tfunet-train: resuming after epoch [12]\b", second.stdout)  # in the coarse stage
    with (tmp_path / "logs" / "train_log.csv").open(newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(RUN["epochs"]))
    assert keras.saving.load_model(tmp_path / "saved_models" / "best_model.keras").input_shape == (None, 32, 32, 3)
