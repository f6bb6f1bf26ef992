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


def _logged(epochs: list[int], values: list[float]) -> tuple[list[int], list[float]]:
    """The epochs that logged a value: with --validate-every, the others hold "NA", and a line
    drawn through NaN would show only isolated points."""
    pairs = [(e, v) for e, v in zip(epochs, values) if v == v]
    return [e for e, _ in pairs], [v for _, v in pairs]


def plot_loss_curves(csv_path: str | Path, png_path: str | Path) -> Path:
    """Draw train/val loss and val Dice per epoch from the CSV log."""
    log = read_log(csv_path)
    if not log.get("epoch"):
        raise TfunetError(f"training log {csv_path} has no epochs yet")
    epochs = [int(e) + 1 for e in log["epoch"]]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(*_logged(epochs, log["loss"]), "o-", label="train loss")
    if "val_loss" in log:
        ax_loss.plot(*_logged(epochs, log["val_loss"]), "o-", label="val loss")
    ax_loss.set(xlabel="epoch", ylabel="BCE + Dice loss", title="Loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    for key, label in (("val_dice_pooled", "val Dice (pooled)"), ("val_dice", "val Dice (per slice)"),
                       ("dice_pooled", "train Dice (pooled)")):
        if key in log:
            ax_dice.plot(*_logged(epochs, log[key]), "o-", label=label)
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="Dice", ylim=(0, 1))
    ax_dice.legend()
    ax_dice.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(png_path)


def plot_sample(image, truth, prediction, png_path: str | Path, title: str = "") -> Path:
    """One slice in four panels: the MRI (its three channels as RGB, as in the original's
    figures), the ground truth, the prediction, and an overlay on the FLAIR channel in grey
    (truth green, prediction red, both yellow; grey, because the tumour is green in the RGB)."""
    import numpy as np

    truth = np.asarray(truth, bool).squeeze()
    prediction = np.asarray(prediction, bool).squeeze()
    image = np.asarray(image)
    flair = image[..., 1 if image.shape[-1] > 1 else 0].astype(np.float32) / 255.0
    overlay = np.repeat(flair[..., None], 3, axis=-1)
    colour = np.zeros_like(overlay)
    colour[..., 0] = prediction
    colour[..., 1] = truth
    labelled = truth | prediction
    overlay[labelled] = 0.45 * overlay[labelled] + 0.55 * colour[labelled]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    panels = (("MRI", image, None), ("ground truth", truth, "gray"), ("prediction", prediction, "gray"),
              ("FLAIR: truth green, prediction red", overlay, None))
    for ax, (name, data, cmap) in zip(axes, panels):
        scale = {"cmap": cmap, "vmin": 0, "vmax": 1} if cmap else {}
        ax.imshow(data, interpolation="nearest", **scale)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(png_path)


ARCHITECTURE_HELP = ("model_architecture.png needs pydot and Graphviz: pip install 'tfunet[figures]' "
                     "(or pip install pydot) and install Graphviz's `dot` (apt-get install graphviz, "
                     "brew install graphviz, or conda install graphviz)")


def plot_mosaic(flair, mask, png_path: str | Path, title: str = "", max_slices: int = 16) -> Path:
    """Axial slices (S, H, W) of a volume as a grid, FLAIR in grey with the predicted tumour in
    red: the tumour-bearing slices (evenly picked when there are more than `max_slices`), or
    evenly spaced slices when there is no tumour. Orientation as shown: anterior at the top, the
    patient's right on the left."""
    import numpy as np

    flair, mask = np.asarray(flair), np.asarray(mask, bool)
    picks = np.flatnonzero(mask.any(axis=(1, 2)))
    if not len(picks):
        picks = np.arange(len(flair))
    picks = picks[np.linspace(0, len(picks) - 1, min(max_slices, len(picks))).round().astype(int)]
    cols = min(4, len(picks))
    rows = -(-len(picks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, k in zip(axes.flat, picks):
        grey = np.repeat(flair[k, ..., None].astype(np.float32) / 255.0, 3, axis=-1)
        grey[mask[k]] = 0.45 * grey[mask[k]] + 0.55 * np.array([1.0, 0.0, 0.0])
        ax.imshow(grey, interpolation="nearest")
        ax.set_title(f"slice {k}", fontsize=9)
    fig.suptitle(title or "FLAIR, prediction in red (anterior up, patient's right on the left)", fontsize=10)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return Path(png_path)


def plot_architecture(model, png_path: str | Path) -> Path | None:
    """Draw the model with `keras.utils.plot_model`; None when pydot or Graphviz is missing
    (the caller prints `ARCHITECTURE_HELP`), because the figure is optional."""
    import keras

    try:
        with atomic_path(png_path) as tmp:
            keras.utils.plot_model(model, to_file=str(tmp), show_shapes=True, show_layer_names=True,
                                   dpi=72)
    except ImportError:
        return None
    return Path(png_path)
