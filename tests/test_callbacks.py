import math

import keras
import pytest

from tfunet.callbacks import BestModelCheckpoint, LossCurvePlot
from tfunet.metadata import read_metadata
from tfunet.model import build_unet


@pytest.fixture
def model():
    return build_unet(image_size=16, depth=1, base_filters=2)


def _run(callback, model, values):
    callback.set_model(model)
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {"val_dice_pooled": value})


@pytest.mark.parametrize("values, threshold, best, best_epoch", [
    ([0.2, 0.5, 0.4], None, 0.5, 2),           # a worse epoch never overwrites a better one
    ([0.2, math.nan, 0.1], None, 0.2, 1),      # NaN is never saved
    ([0.3, 0.6], 0.7, 0.7, None),              # resumed run: nothing beats the old best
    ([0.3, 0.8], 0.7, 0.8, 2),
])
def test_best_checkpoint_keeps_the_best(tmp_path, model, values, threshold, best, best_epoch):
    path = tmp_path / "best_model.keras"
    cb = BestModelCheckpoint(path, {"threshold": 0.5}, initial_value_threshold=threshold, verbose=0)
    _run(cb, model, values)
    assert cb.best == pytest.approx(best)
    assert cb.best_epoch == best_epoch
    assert path.exists() == (best_epoch is not None)
    if best_epoch:
        assert read_metadata(path)["best"] == {"epoch": best_epoch, "val_dice_pooled": pytest.approx(best)}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_failed_save_keeps_the_previous_model(tmp_path, model, monkeypatch):
    path = tmp_path / "best_model.keras"
    cb = BestModelCheckpoint(path, {}, verbose=0)
    _run(cb, model, [0.5])
    before = path.read_bytes()

    def broken_save(filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", broken_save)
    with pytest.raises(OSError):
        cb.on_epoch_end(1, {"val_dice_pooled": 0.9})
    assert path.read_bytes() == before
    assert keras.saving.load_model(path).count_params() == model.count_params()


def test_loss_curve_plot_reads_the_csv(tmp_path):
    csv = tmp_path / "train_log.csv"
    csv.write_text("epoch,loss,val_loss,val_dice_pooled\n0,1.0,1.1,0.2\n1,0.8,0.9,0.5\n")
    LossCurvePlot(csv, tmp_path / "curves.png").on_epoch_end(1)
    data = (tmp_path / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_loss_curve_plot_skips_epochs_that_did_not_validate(tmp_path, monkeypatch):
    """--validate-every leaves "NA" in the CSV: the validation curves join the epochs that have a
    value instead of showing NaN gaps."""
    import matplotlib.axes

    drawn = {}
    original = matplotlib.axes.Axes.plot

    def record(self, x, y, *args, label=None, **kwargs):
        drawn[label] = (list(x), list(y))
        return original(self, x, y, *args, label=label, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    csv = tmp_path / "train_log.csv"
    csv.write_text("epoch,loss,val_loss,val_dice_pooled\n0,1.0,1.1,0.2\n1,0.8,NA,NA\n2,0.7,0.9,0.5\n")
    LossCurvePlot(csv, tmp_path / "curves.png").on_epoch_end(2)
    assert drawn["train loss"] == ([1, 2, 3], [1.0, 0.8, 0.7])
    assert drawn["val loss"] == ([1, 3], [1.1, 0.9])
    assert drawn["val Dice (pooled)"] == ([1, 3], [0.2, 0.5])
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
