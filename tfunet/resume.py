"""Resuming a killed run: start the same command again and it continues.

At the end of every epoch `keras.callbacks.BackupAndRestore` saves the weights, the optimizer
state (so the learning-rate schedule, a function of the optimizer's step, continues where it
stopped) and the epoch number under logs/backup/. A restarted run with a backup then:
  * drops rows of logs/train_log.csv from epochs the backup does not hold (the process may die
    after writing an epoch's row but before backing it up) and appends from there, so every
    epoch appears exactly once;
  * starts the best-model checkpoint from the best monitored value in the log, so a worse epoch
    never overwrites a better model.
The backup is deleted when training finishes, so running the command again after a finished
run starts a new run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import keras

from tfunet.errors import TfunetError
from tfunet.fileio import atomic_path, write_json, write_text

CONFIG_FILE = "tfunet_config.json"
WALL_FILE = "wall_seconds.json"


def backup_dir(log_dir) -> Path:
    """Where a run writing its logs to `log_dir` (or a config's log_dir) keeps its backup."""
    return Path(getattr(log_dir, "log_dir", log_dir)) / "backup"


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose files are replaced atomically: a kill during a save leaves the
    previous epoch's backup whole instead of a truncated HDF5 file."""

    def _save_model(self):
        Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
        with atomic_path(self._weights_path) as tmp:
            self.model.save_weights(tmp)
        write_text(self._training_metadata_path,
                   json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))


class WallClock:
    """Seconds a run has taken, over every process that worked on it: a resumed run would
    otherwise report only its last process's time, and wall times are what recipes are compared
    by. Saved after every epoch (and fold); time after the last save of a killed process is
    lost, as is the work it did. carry_on=False starts from zero (a fresh run)."""

    def __init__(self, path: Path, carry_on: bool = True):
        self.path, self.start = path, time.perf_counter()
        try:
            self.before = float(json.loads(path.read_text())["seconds"]) if carry_on and path.is_file() else 0.0
        except (ValueError, KeyError, TypeError):
            raise TfunetError(f"unreadable wall-time file {path}; delete it to count from zero") from None

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def save(self) -> None:
        write_json(self.path, {"seconds": round(self.seconds(), 1)})


def backed_up_epoch(directory: str | Path) -> int:
    """How many epochs the backup in `directory` holds (0: none, a fresh start)."""
    path = Path(directory) / "training_metadata.json"
    if not path.is_file():
        return 0
    try:
        return int(json.loads(path.read_text())["epoch"])
    except (ValueError, KeyError, TypeError):
        raise TfunetError(f"unreadable training backup {path}; delete {path.parent} to start afresh") from None


def prepare_resume(directory: str | Path, config_dict: dict, ignore=(), defaults: dict | None = None) -> int:
    """The number of epochs to resume after (0: a fresh start).

    Refuses to resume a backup made with other options (the weights or the learning-rate
    schedule would not fit), except those in `ignore`, which only change how the run executes;
    a fresh start records the options beside the backup. An option the record lacks (a backup
    made before the option existed) counts as its value in `defaults`, the behaviour it had.
    """
    epochs = backed_up_epoch(directory)
    path = Path(directory) / CONFIG_FILE
    if not epochs:
        write_json(path, config_dict)
        return 0
    saved = {**(defaults or {}), **json.loads(path.read_text())} if path.is_file() else config_dict
    changed = sorted(k for k in (set(saved) | set(config_dict)) - set(ignore)
                     if saved.get(k) != config_dict.get(k))
    if changed:
        raise TfunetError(
            f"the run backed up in {directory} used other options ({', '.join(changed)}); "
            f"rerun the same command to resume, or delete {directory} to start afresh")
    return epochs


def truncate_log(csv_path: str | Path, epochs: int, monitor: str, mode: str = "max",
                 from_epoch: int = 0) -> float | None:
    """Keep the rows of epochs 0..epochs-1 of a CSVLogger file; return the best `monitor` value
    of every finite row read from epoch `from_epoch` on (kept or not: a dropped epoch may already
    have saved its model)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        return None
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    kept, values = [], []
    for row in rows:
        if None in row.values():
            continue  # a row cut short by the kill
        try:
            epoch = int(row["epoch"])
        except ValueError:
            continue
        try:
            value = float(row.get(monitor) or "nan")
        except ValueError:  # "NA": an epoch that did not validate (--validate-every)
            value = math.nan
        if math.isfinite(value) and epoch >= from_epoch:
            values.append(value)
        if epoch < epochs:
            kept.append(row)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)  # excel dialect, as CSVLogger writes
    writer.writeheader()
    writer.writerows(kept)
    write_text(csv_path, out.getvalue())
    if not values:
        return None
    return max(values) if mode == "max" else min(values)
