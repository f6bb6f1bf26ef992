import csv
import json
import math
import os
import re
import subprocess

import pytest

from tfunet.config import EXECUTION_ONLY, make_config
from tfunet.errors import TfunetError
from tfunet.metadata import read_metadata
from tfunet.fileio import write_json
from tfunet.precision import resolve_policy
from tfunet.resume import WALL_FILE, WallClock, backed_up_epoch, backup_dir, prepare_resume, truncate_log
from tfunet.train import make_schedule, train

HEADER = "epoch,loss,val_dice_pooled\r\n"


def _log(tmp_path, rows):
    path = tmp_path / "train_log.csv"
    path.write_text(HEADER + "".join(f"{r}\r\n" for r in rows))
    return path


@pytest.mark.parametrize("rows, epochs, kept, best", [
    (["0,1.0,0.2", "1,0.9,0.5", "2,0.8,0.4"], 2, ["0", "1"], 0.5),
    (["0,1.0,0.2", "1,0.9,0.5", "2,0.8,0.7"], 2, ["0", "1"], 0.7),  # epoch 2 saved its model, then died
    (["0,1.0,0.2", "1,0.9,nan", "2,0.8"], 3, ["0", "1"], 0.2),  # NaN ignored, a row cut short dropped
    (["0,1.0,0.3", "1,0.9,0.1"], 2, ["0", "1"], 0.3),
    (["0,1.0,0.3", "1,0.9,NA", "2,0.8,0.4"], 3, ["0", "1", "2"], 0.4),  # epoch 1 did not validate
    ([], 1, [], None),
])
def test_truncate_log_keeps_backed_up_epochs_and_returns_the_best(tmp_path, rows, epochs, kept, best):
    path = _log(tmp_path, rows)
    assert truncate_log(path, epochs, "val_dice_pooled") == (pytest.approx(best) if best else None)
    with path.open(newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == kept
    assert path.read_bytes().startswith(HEADER.encode())  # the dialect CSVLogger appends in


def test_truncate_log_without_a_log(tmp_path):
    assert truncate_log(tmp_path / "missing.csv", 3, "val_dice_pooled") is None


def test_prepare_resume_refuses_other_options(tmp_path):
    config = make_config({"epochs": 5}).to_dict()
    assert prepare_resume(tmp_path, config) == 0  # fresh: the options are recorded
    (tmp_path / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    assert prepare_resume(tmp_path, config) == 2
    with pytest.raises(TfunetError, match=r"used other options \(epochs, lr\); rerun the same command"):
        prepare_resume(tmp_path, {**config, "epochs": 6, "lr": 0.1})


@pytest.mark.parametrize("now, resumes", [("slice", True), ("patient", False)])
def test_a_backup_older_than_an_option_resumes_with_its_default_only(tmp_path, now, resumes):
    config = make_config({"epochs": 5}).to_dict()
    prepare_resume(tmp_path, {k: v for k, v in config.items() if k != "foreground_sampling"})
    (tmp_path / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    current = {**config, "foreground_sampling": now}
    if resumes:
        assert prepare_resume(tmp_path, current, defaults=config) == 2
    else:
        with pytest.raises(TfunetError, match=r"used other options \(foreground_sampling\)"):
            prepare_resume(tmp_path, current, defaults=config)


def test_prepare_resume_ignores_options_that_only_change_execution(tmp_path):
    """A backup resumes with another --validate-every, --data-threads, ... (and from a version
    that lacked one of them), never with another learning rate."""
    config = make_config({"epochs": 5}).to_dict()
    old = {k: v for k, v in config.items() if k not in ("validate_every", "fused_batch_norm")}
    prepare_resume(tmp_path, old)
    (tmp_path / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    faster = {**config, "validate_every": 4, "data_threads": 1, "cache_slices": False, "fused_batch_norm": True}
    assert prepare_resume(tmp_path, faster, ignore=EXECUTION_ONLY) == 2
    with pytest.raises(TfunetError, match=r"used other options \(lr\)"):
        prepare_resume(tmp_path, {**faster, "lr": 0.1}, ignore=EXECUTION_ONLY)


def test_resume_refuses_a_backup_made_under_another_policy(tiny_config):
    """`auto` can mean bfloat16 on one machine and float32 on the next: the resolved policy is
    compared too, not only the config."""
    other = "float32" if resolve_policy("auto") != "float32" else "mixed_bfloat16"
    backup = backup_dir(tiny_config)
    backup.mkdir(parents=True)
    write_json(backup / "tfunet_config.json", {**tiny_config.to_dict(), "policy": other})
    (backup / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    with pytest.raises(TfunetError, match=r"used other options \(policy\)"):
        train(tiny_config, verbose=0)


def test_unreadable_backup_is_a_clear_error(tmp_path):
    (tmp_path / "training_metadata.json").write_text("{")
    with pytest.raises(TfunetError, match="unreadable training backup .*; delete .* to start afresh"):
        backed_up_epoch(tmp_path)


RUN = dict(image_size=32, base_filters=4, depth=2, num_patients=5, slices_per_patient=6, epochs=5,
           batch_size=8, lr=1e-2)


def test_kill_9_and_rerun_continues_from_the_last_finished_epoch(tmp_path, kill_when_written):
    args = ["tfunet-train", "--deterministic", "--output-dir", str(tmp_path)]
    for key, value in RUN.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    backup = tmp_path / "logs" / "backup" / "training_metadata.json"
    csv_path = tmp_path / "logs" / "train_log.csv"

    kill_when_written(args, backup, env)
    rows_before = csv_path.read_text().count("\n") - 1
    assert 1 <= rows_before < RUN["epochs"]
    first_seconds = json.loads((tmp_path / "logs" / WALL_FILE).read_text())["seconds"]
    assert first_seconds > 0

    second = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "tfunet-train: resuming after epoch" in second.stdout
    results = json.loads(second.stdout.split("tfunet-train: final metrics of the best model\n", 1)[1])
    assert results["train_seconds"] > first_seconds  # the killed process's time counts too

    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(RUN["epochs"]))  # each epoch exactly once
    steps = math.ceil(int(re.search(r"(\d+) train /", second.stdout).group(1)) / RUN["batch_size"])
    schedule = make_schedule(make_config(RUN), steps)
    for row in rows:  # the learning-rate schedule continued where it stopped
        assert float(row["learning_rate"]) == pytest.approx(float(schedule((int(row["epoch"]) + 1) * steps)),
                                                            abs=1e-7)
    best = read_metadata(tmp_path / "saved_models" / "best_model.keras")["best"]["val_dice_pooled"]
    assert best >= max(float(r["val_dice_pooled"]) for r in rows) - 1e-9
    assert not backup.parent.exists()  # a finished run removes its backup


@pytest.mark.parametrize("saved, carry_on, before", [
    (None, True, 0.0), ({"seconds": 100.0}, True, 100.0), ({"seconds": 7}, True, 7.0),
    ({"seconds": 100.0}, False, 0.0),  # a fresh run starts from zero
])
def test_wall_clock_carries_on_from_its_file(tmp_path, saved, carry_on, before):
    path = tmp_path / WALL_FILE
    if saved is not None:
        path.write_text(json.dumps(saved))
    clock = WallClock(path, carry_on=carry_on)
    assert before <= clock.seconds() < before + 5
    clock.save()
    assert before <= json.loads(path.read_text())["seconds"] < before + 5


@pytest.mark.parametrize("text", ["", "{}", '{"seconds": "soon"}', "[1]"])
def test_unreadable_wall_clock_file(tmp_path, text):
    (tmp_path / WALL_FILE).write_text(text)
    with pytest.raises(TfunetError, match="unreadable wall-time file"):
        WallClock(tmp_path / WALL_FILE)
