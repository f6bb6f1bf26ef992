"""Figures a person would rather look at than read."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from tfunet.errors import TfunetError  # noqa: E402
from tfunet.fileio import atomic_path  # noqa: E402


def read_log(csv_path: str | Path) -> dict[str, list[float]]:
    """Columns of a Keras CSVLogger file as float lists."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise TfunetError(f"training log not found: {csv_path}")
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(key, []).append(float("nan"))
    return columns


def plot_loss_curves(csv_path: str | Path, png_path: str | Path) -> Path:
    """Draw train/val loss and val Dice per epoch from the CSV log."""
    log = read_log(csv_path)
    if not log.get("epoch"):
        raise TfunetError(f"training log {csv_path} has no epochs yet")
    epochs = [int(e) + 1 for e in log["epoch"]]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, log["loss"], "o-", label="train loss")
    if "val_loss" in log:
        ax_loss.plot(epochs, log["val_loss"], "o-", label="val loss")
    ax_loss.set(xlabel="epoch", ylabel="BCE + Dice loss", title="Loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    for key, label in (("val_dice_pooled", "val Dice (pooled)"), ("val_dice", "val Dice (per slice)"),
                       ("dice_pooled", "train Dice (pooled)")):
        if key in log:
            ax_dice.plot(epochs, log[key], "o-", label=label)
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="Dice", ylim=(0, 1))
    ax_dice.legend()
    ax_dice.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(png_path)
