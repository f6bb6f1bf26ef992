"""Keras callbacks of tfunet-train."""

from __future__ import annotations

import math
from pathlib import Path

import keras

from tfunet.fileio import atomic_path
from tfunet.metadata import write_metadata
from tfunet.plots import plot_loss_curves


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the model, with its metadata, whenever `monitor` improves (monitor=None: after every
    epoch, so the last epoch's model stays; nothing is selected).

    Unlike `keras.callbacks.ModelCheckpoint` it writes atomically (a crash mid-save never leaves
    a broken best model), never saves a non-finite score, and starts from
    `initial_value_threshold`, so a resumed run cannot overwrite a better model with a worse one.
    """

    def __init__(self, path: str | Path, metadata: dict, monitor: str | None = "val_dice_pooled",
                 mode: str = "max", initial_value_threshold: float | None = None, verbose: int = 1):
        super().__init__()
        self.path = Path(path)
        self.metadata = metadata
        self.monitor = monitor
        self.sign = 1.0 if mode == "max" else -1.0
        self.best = initial_value_threshold
        self.best_epoch = None
        self.verbose = verbose

    def _improved(self, value: float) -> bool:
        return self.best is None or self.sign * (value - self.best) > 0

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is None:
            loss = float((logs or {}).get("loss", 0.0))
            if math.isfinite(loss):  # a diverged epoch does not replace the last good model
                self._save({"epoch": epoch + 1})
            return
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        if not self._improved(value):
            return
        if self.verbose:
            previous = "none" if self.best is None else f"{self.best:.4f}"
            print(f"\nEpoch {epoch + 1}: {self.monitor} improved {previous} -> {value:.4f}; "
                  f"saving {self.path}")
        self.best, self.best_epoch = value, epoch + 1
        self._save({"epoch": epoch + 1, self.monitor: value})

    def _save(self, best: dict):
        # A training wrapper (tfunet.training_model) saves the plain U-Net it trains.
        model = self.model.inference_model() if hasattr(self.model, "inference_model") else self.model
        with atomic_path(self.path) as tmp:
            model.save(tmp)
        write_metadata(self.path, {**self.metadata, "best": best})


class LossCurvePlot(keras.callbacks.Callback):
    """Redraw the loss-curve PNG from the CSV log after every epoch.

    Place it after `CSVLogger` in the callback list so the epoch's row is already written.
    """

    def __init__(self, csv_path: str | Path, png_path: str | Path):
        super().__init__()
        self.csv_path = Path(csv_path)
        self.png_path = Path(png_path)

    def on_epoch_end(self, epoch, logs=None):
        plot_loss_curves(self.csv_path, self.png_path)


class LearningRateLogger(keras.callbacks.Callback):
    """Add the learning rate at the end of each epoch to the logs (a `learning_rate` column in
    the CSV log), which shows that a resumed run continued the schedule.

    Place it before `CSVLogger` in the callback list.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
