import csv
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from tfunet.cli.train import main as train_main
from tfunet.config import make_config
from tfunet.data.synthetic import generate
from tfunet.metadata import read_metadata
from tfunet.model import build_from_config
from tfunet.precision import resolve_policy
from tfunet.train import compile_model, make_optimizer, make_schedule


def test_short_fit_lowers_the_loss(tiny_config):
    keras.utils.set_random_seed(0)
    tiny_config.epochs, tiny_config.lr = 8, 1e-2
    data = generate(4, 6, tiny_config.image_size, seed=1)
    model = compile_model(build_from_config(tiny_config), tiny_config, steps_per_epoch=3)
    history = model.fit(data["image"].astype("float32"), data["mask"].astype("float32"),
                        batch_size=8, epochs=tiny_config.epochs, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0]


RESTART = {"image_size": 64, "coarse_size": 32, "coarse_epochs": 6, "fine_lr": 5e-4}


@pytest.mark.parametrize("options, checks", [
    ({}, [(0, 1e-3), (50, 5e-4), (100, 0.0)]),
    ({"warmup_epochs": 2}, [(0, 0.0), (20, 1e-3), (60, 5e-4), (100, 0.0)]),
    # --fine-lr: the first cosine ends with the coarse stage (step 60), a second one starts there.
    (RESTART, [(0, 1e-3), (30, 5e-4), (59, 6.9e-7), (60, 5e-4), (80, 2.5e-4), (100, 0.0)]),
    ({**RESTART, "warmup_epochs": 2}, [(0, 0.0), (20, 1e-3), (40, 5e-4), (60, 5e-4), (100, 0.0)]),
])
def test_cosine_schedule_with_optional_warmup_and_restart(options, checks):
    config = make_config({"epochs": 10, "lr": 1e-3, **options})
    schedule = make_schedule(config, steps_per_epoch=10)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    for step, expected in checks:
        assert float(schedule(step)) == pytest.approx(expected, abs=1e-7)
        assert float(restored(step)) == pytest.approx(expected, abs=1e-7)
    optimizer = make_optimizer(config, steps_per_epoch=10)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert optimizer.weight_decay == pytest.approx(1e-5)


def test_train_writes_every_artefact(trained_model):
    config = trained_model["config"]
    logs = config.log_dir
    assert trained_model["model_path"].is_file()
    assert (logs / "train_log.csv").read_text().count("\n") == config.epochs + 1
    assert (logs / "loss_curves.png").stat().st_size > 1000
    assert any(p.name.startswith("events.out.tfevents") for p in (logs / "tensorboard").rglob("*"))
    split = json.loads((logs / "split.json").read_text())
    assert sorted(sum(split.values(), [])) == [f"synth_{i:03d}" for i in range(config.num_patients)]
    meta = read_metadata(trained_model["model_path"])
    assert meta["image_size"] == config.image_size and meta["threshold"] == config.threshold
    assert meta["config"]["base_filters"] == config.base_filters and meta["split"] == split
    assert 1 <= meta["best"]["epoch"] <= config.epochs
    assert meta["policy"] == resolve_policy("auto") and meta["config"]["mixed_precision"] == "auto"
    # The reloaded best model scores on validation what its epoch scored when it was saved.
    assert trained_model["results"]["val"]["dice_pooled"] == pytest.approx(meta["best"]["val_dice_pooled"], abs=1e-4)
    assert set(trained_model["results"]["test"]) == set(trained_model["results"]["val"])


def test_saved_model_reloads_in_a_fresh_process_and_predicts_the_same(trained_model, tmp_path):
    path = trained_model["model_path"]
    images = generate(1, 4, trained_model["config"].image_size, seed=7)["image"].astype("float32")
    np.save(tmp_path / "x.npy", images)
    script = (
        "import sys, numpy as np, tfunet\n"
        f"m = tfunet.load_model({str(path)!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))\n"
        "print(type(m.loss).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("BCEDiceLoss")
    here = keras.saving.load_model(path).predict(images, verbose=0)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), here, atol=1e-5)


def test_cli_end_to_end_with_a_config_file(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("image-size: 32\nbase-filters: 4\ndepth: 2\nnum-patients: 4\n"
                   "slices-per-patient: 4\nepochs: 2\nbatch-size: 8\n")
    # Without the TensorFlow settings this test process made: the command must make them itself.
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    out = subprocess.run(["tfunet-train", "--config", str(cfg), "--output-dir", str(tmp_path), "--epochs", "1"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "final metrics" in out.stdout
    # Output to a file or pipe: one line per epoch, no progress-bar redraws, no ERROR-level log line.
    assert "\r" not in out.stdout and "\b" not in out.stdout and "━" not in out.stdout
    assert re.search(r"^1/1 - \d+s - .*loss: ", out.stdout, re.M), out.stdout
    assert not re.findall(r"^E\d{4} .*", out.stderr, re.M)
    assert (tmp_path / "saved_models" / "best_model.keras").is_file()
    assert (tmp_path / "logs" / "train_log.csv").read_text().count("\n") == 2  # header + 1 epoch


@pytest.mark.parametrize("argv, message", [
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--image-size", "100"], "image-size 100 is not divisible by 2**depth = 16"),
    (["--dataset", "lgg", "--data-dir", "/no/such/dir"], "data folder not found: /no/such/dir"),
    (["--dataset", "lgg"], "--data-dir is required"),
    (["--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
    (["--upsampling", "nearest"], "argument --upsampling: invalid choice"),
    (["--config", "/no/such.yaml"], "config file not found: /no/such.yaml"),
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("tfunet-train: error: ") and message in err[0]


@pytest.mark.parametrize("argv, expected", [([], False), (["--fused-batch-norm"], True)])
def test_fused_batch_norm_is_opt_in(argv, expected):
    from tfunet.cli.train import build_parser

    args = vars(build_parser().parse_args(argv))
    assert make_config({k: v for k, v in args.items() if k != "config"}).fused_batch_norm is expected


def test_help_and_bad_flags_answer_without_tensorflow():
    """`tfunet-train --help` and argument errors never wait for TensorFlow or Keras."""
    script = (
        "import sys\n"
        "from tfunet.cli.train import build_parser, main\n"
        "from tfunet.config import make_config\n"
        "assert main(['--image-size', '30']) == 2\n"
        "try:\n"
        "    build_parser().parse_args(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage: tfunet-train" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "image-size 30 is not divisible" in out.stderr


@pytest.mark.parametrize("options", [{"foreground_share": 0.5}, {"steps_per_execution": 2},
                                     {"fused_batch_norm": True},
                                     {"foreground_share": 0.5, "foreground_sampling": "patient"}])
def test_training_options_keep_the_epoch_and_its_log(tiny_config, options):
    """Oversampling (an endless stream, sized by steps_per_epoch), several steps per execution and
    the fused batch norm train the same epochs and write the same CSV columns."""
    from tfunet.train import train

    for key, value in options.items():
        setattr(tiny_config, key, value)
    tiny_config.epochs = 2
    train(tiny_config, verbose=0)
    rows = (tiny_config.log_dir / "train_log.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and "val_dice_pooled" in rows[0] and "learning_rate" in rows[0]
    assert (tiny_config.model_dir / "best_model.keras").is_file()


@pytest.mark.parametrize("first, end, every, epochs", [
    (0, 10, 1, list(range(1, 11))),
    (0, 10, 4, [1, 4, 8, 10]),
    (3, 10, 4, [4, 8, 10]),  # resumed after epoch 3: its first epoch validates, for the CSV columns
    (0, 32, 8, [1, 8, 16, 24, 32]),
    (10, 12, 5, [11, 12]),  # a fine stage after 10 coarse epochs
    (0, 1, 3, [1]),
])
def test_validation_epochs(first, end, every, epochs):
    from tfunet.train import validation_epochs

    assert validation_epochs(first, end, every) == epochs


def test_validate_every_keeps_the_csv_columns_and_selects_among_validated_epochs(tiny_config):
    from tfunet.train import train

    tiny_config.epochs, tiny_config.validate_every = 4, 3
    train(tiny_config, verbose=0)
    with (tiny_config.log_dir / "train_log.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert "learning_rate" in reader.fieldnames and not any(k.startswith("val_learning") for k in reader.fieldnames)
    assert [r["val_dice_pooled"] == "NA" for r in rows] == [False, True, False, False]
    assert all(r["loss"] != "NA" for r in rows)
    best = read_metadata(tiny_config.model_dir / "best_model.keras")["best"]
    assert best["epoch"] in (1, 3, 4)


def test_foreground_share_without_tumour_is_a_clear_error(tiny_config, monkeypatch):
    from tfunet.errors import TfunetError
    from tfunet.train import train

    monkeypatch.setattr("tfunet.train.tumour_burden", lambda source, ids, slices=False: {pid: 0 for pid in ids})
    tiny_config.foreground_share = 0.5
    with pytest.raises(TfunetError, match="--foreground-share needs training slices with tumour"):
        train(tiny_config, verbose=0)
