"""tfunet.evaluate and tfunet-evaluate: every reported figure on hand-computed cases, per-patient
3-D Dice against a NumPy reference, streaming by patient, model loading, the CLI end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tfunet import evaluate as ev
from tfunet import metrics
from tfunet.cli.evaluate import main
from tfunet.data.sources import config_for_model, splits_for_model
from tfunet.errors import TfunetError
from tfunet.metadata import read_metadata, update_metadata
from tfunet.postprocess import Settings
from tfunet.predictor import load_predictor

# --- every figure on hand-computed slices (4 pixels each) --------------------------------------

SLICES = {  # name: (truth, prediction)
    "perfect": ([1, 1, 0, 0], [1, 1, 0, 0]),  # tp 2
    "empty/empty": ([0, 0, 0, 0], [0, 0, 0, 0]),  # nothing to find, nothing found
    "empty truth, 1 px predicted": ([0, 0, 0, 0], [0, 0, 0, 1]),  # fp 1
    "missed": ([1, 1, 0, 0], [0, 0, 0, 0]),  # fn 2
    "partial overlap": ([1, 1, 1, 0], [0, 1, 1, 1]),  # tp 2, fp 1, fn 1
}
# Per slice: dice, jaccard, precision, recall (0/0 counts 1).
EXPECTED = {
    "perfect": (1.0, 1.0, 1.0, 1.0),
    "empty/empty": (1.0, 1.0, 1.0, 1.0),
    "empty truth, 1 px predicted": (0.0, 0.0, 0.0, 1.0),
    "missed": (0.0, 0.0, 1.0, 0.0),
    "partial overlap": (4 / 6, 2 / 4, 2 / 3, 2 / 3),
}


def arrays(names):
    truth = np.array([SLICES[n][0] for n in names], bool).reshape(-1, 2, 2)
    pred = np.array([SLICES[n][1] for n in names], bool).reshape(-1, 2, 2)
    return pred, truth


@pytest.mark.parametrize("name", list(SLICES))
def test_each_figure_on_one_hand_computed_slice(name):
    pred, truth = arrays([name])
    s = ev.summarize(*metrics.confusion_counts(pred, truth), ["p"])
    dice, jaccard, precision, recall = EXPECTED[name]
    assert (s["dice"], s["jaccard"], s["precision"], s["recall"]) == pytest.approx(
        (dice, jaccard, precision, recall))
    assert s["f1"] == pytest.approx(dice)  # the pixel F1 is the Dice
    assert s["patient_dice_mean"] == s["patient_dice_median"] == pytest.approx(dice)  # one slice, one patient
    has_tumour = np.any(truth)
    assert s["dice_tumour_slices"] == (pytest.approx(dice) if has_tumour else None)
    assert s["empty_slices_with_prediction"] == (None if has_tumour else float(np.any(pred)))


def test_every_figure_on_a_hand_computed_split():
    # Patient a: perfect + empty/empty. Patient b: the other three.
    names = list(SLICES)
    pred, truth = arrays(names)
    s = ev.summarize(*metrics.confusion_counts(pred, truth), ["a", "a", "b", "b", "b"])
    assert s["dice"] == pytest.approx((1 + 1 + 0 + 0 + 4 / 6) / 5)
    assert s["jaccard"] == pytest.approx((1 + 1 + 0 + 0 + 0.5) / 5)
    assert s["precision"] == pytest.approx((1 + 1 + 0 + 1 + 2 / 3) / 5)
    assert s["recall"] == pytest.approx((1 + 1 + 1 + 0 + 2 / 3) / 5)
    # Pooled: tp 4, fp 2, fn 3.
    assert s["dice_pooled"] == pytest.approx(8 / 13)
    assert s["jaccard_pooled"] == pytest.approx(4 / 9)
    assert s["precision_pooled"] == pytest.approx(4 / 6)
    assert s["recall_pooled"] == pytest.approx(4 / 7)
    assert s["dice_tumour_slices"] == pytest.approx((1 + 0 + 4 / 6) / 3)
    # 3-D: a has tp 2 -> 1; b has tp 2, fp 2, fn 3 -> 4 / 9.
    assert s["patients"]["a"] == {"dice_3d": 1.0, "slices": 2, "truth_pixels": 2, "predicted_pixels": 2}
    assert s["patients"]["b"]["dice_3d"] == pytest.approx(4 / 9)
    assert s["patient_dice_mean"] == s["patient_dice_median"] == pytest.approx((1 + 4 / 9) / 2)
    assert s["empty_slices_with_prediction"] == 0.5
    assert (s["num_slices"], s["num_tumour_slices"], s["num_patients"],
            s["num_empty_slices_with_prediction"]) == (5, 3, 2, 1)


def reference_patient_dice(pred, truth, ids):
    """Straight from the definition: Dice of each patient's stacked slices."""
    out = {}
    for pid in sorted(set(ids)):
        p, t = pred[np.array(ids) == pid], truth[np.array(ids) == pid]
        total = p.sum() + t.sum()
        out[pid] = 2 * np.sum(p & t) / total if total else 1.0
    return out


def test_patient_dice_matches_a_numpy_reference():
    rng = np.random.default_rng(1)
    truth = rng.random((40, 16, 16)) < 0.2
    pred = rng.random((40, 16, 16)) < 0.25
    truth[30:], pred[30:] = False, False  # patient "p3" has nothing to find and finds nothing
    ids = [f"p{i // 10}" for i in range(40)]
    order = rng.permutation(40)  # slice order must not matter
    expected = reference_patient_dice(pred, truth, ids)
    summary = ev.summarize(*metrics.confusion_counts(pred[order], truth[order]), np.array(ids)[order])
    got = {pid: p["dice_3d"] for pid, p in summary["patients"].items()}
    assert got.keys() == expected.keys()
    for pid in expected:
        assert got[pid] == pytest.approx(expected[pid])
    assert got["p3"] == 1.0
    s = ev.score_masks([pred[:10], pred[10:40]], [truth[:10], truth[10:40]], ["x", "y"])
    assert s["patients"]["x"]["dice_3d"] == pytest.approx(expected["p0"])
    assert s["dice_pooled"] == pytest.approx(metrics.dice(pred, truth, "pooled"))
    assert s["dice"] == pytest.approx(metrics.dice(pred, truth))


def test_summarize_needs_slices():
    with pytest.raises(TfunetError, match="nothing to score"):
        ev.summarize([], [], [], [])


# --- streaming a split patient by patient ---------------------------------------------------

class ShuffledSource:
    """A slice source whose slices come with patients interleaved, as sharded data may."""

    def __init__(self, arrays, seed=0):
        order = np.random.default_rng(seed).permutation(len(arrays["image"]))
        self.arrays = {k: v[order] for k, v in arrays.items()}

    def patients(self):
        ids, counts = np.unique(self.arrays["patient_id"], return_counts=True)
        return dict(zip(ids.tolist(), counts.tolist()))

    def dataset(self, patient_ids):
        import tensorflow as tf

        keep = np.isin(self.arrays["patient_id"], list(patient_ids))
        return tf.data.Dataset.from_tensor_slices({k: v[keep] for k, v in self.arrays.items()})


@pytest.fixture(scope="module")
def synthetic_arrays():
    from tfunet.data.synthetic import generate

    return generate(num_patients=4, slices_per_patient=5, image_size=32, seed=3)


class Oracle:
    """A fake model (the `tfunet.predictor.ModelRunner` protocol) that knows every mask, so
    every figure is known."""

    path, policy, builtin_tta, image_size = Path("oracle.keras"), "float32", None, 32
    meta = {"image_size": 32, "threshold": 0.5, "postprocess": {}}

    def __init__(self, arrays):
        self.table = {img.tobytes(): m.astype(np.float32) for img, m in zip(arrays["image"], arrays["mask"])}

    def raw(self, images):
        return np.stack([self.table[img.tobytes()] for img in images])


oracle = Oracle


def test_evaluate_streams_interleaved_patients_and_keeps_seeded_samples(synthetic_arrays):
    from tfunet.data.sources import DataSplits

    split = {"train": ["synth_000", "synth_001"], "val": ["synth_002"], "test": ["synth_003"]}
    splits = DataSplits(ShuffledSource(synthetic_arrays), split)
    result = ev.evaluate(oracle(synthetic_arrays), splits, "all", batch_size=3, num_samples=4, seed=7,
                         progress=False)
    s = result.summary
    assert (s["num_slices"], s["num_patients"]) == (20, 4)
    assert s["num_tumour_slices"] == int(np.sum(synthetic_arrays["mask"].reshape(20, -1).any(axis=1)))
    for key in ("dice", "jaccard", "precision", "recall", "f1", "dice_pooled", "dice_tumour_slices",
                "patient_dice_mean", "patient_dice_median"):
        assert s[key] == 1.0, key
    assert s["empty_slices_with_prediction"] == 0.0
    assert all(p["slices"] == 5 for p in s["patients"].values())
    assert len(result.samples) == 4
    for sample in result.samples:
        i = np.flatnonzero((synthetic_arrays["patient_id"] == sample["patient_id"])
                           & (synthetic_arrays["slice"] == sample["slice"]))[0]
        np.testing.assert_array_equal(sample["image"], synthetic_arrays["image"][i])
        np.testing.assert_array_equal(sample["truth"], synthetic_arrays["mask"][i, ..., 0] > 0)
    again = ev.evaluate(oracle(synthetic_arrays), splits, "all", batch_size=5, num_samples=4, seed=7,
                        progress=False)
    assert [(x["patient_id"], x["slice"]) for x in again.samples] == \
        [(x["patient_id"], x["slice"]) for x in result.samples]


def test_evaluate_applies_the_settings(synthetic_arrays):
    from tfunet.data.sources import DataSplits

    splits = DataSplits(ShuffledSource(synthetic_arrays), {"train": [], "val": [], "test": ["synth_000"]})
    # The oracle's probabilities are 0 or 1: a threshold of 0.99 changes nothing, but removing
    # components larger than any tumour leaves nothing, so every tumour slice is missed.
    result = ev.evaluate(oracle(synthetic_arrays), splits, "test", Settings(0.99, 10_000), progress=False)
    assert result.summary["dice_pooled"] == 0.0
    assert result.summary["empty_slices_with_prediction"] == 0.0
    assert result.settings == Settings(0.99, 10_000)


def test_evaluate_applies_3d_post_processing_to_whole_patients(synthetic_arrays):
    """Slices arrive interleaved; the largest 3-D component must still see each whole patient."""
    from tfunet.data.sources import DataSplits
    from tfunet.postprocess import to_mask

    rng = np.random.default_rng(4)
    noisy = {**synthetic_arrays, "mask": synthetic_arrays["mask"].copy()}
    noisy["mask"][rng.random(noisy["mask"].shape) < 0.002] = 1  # specks: the oracle predicts them
    splits = DataSplits(ShuffledSource(synthetic_arrays), {"train": [], "val": [], "test": []})
    settings = Settings(0.5, 0, largest_3d_component=True)
    result = ev.evaluate(oracle(noisy), splits, "all", settings, batch_size=3, progress=False)
    ids = sorted(set(synthetic_arrays["patient_id"]))
    rows = [synthetic_arrays["patient_id"] == pid for pid in ids]  # generate() keeps slices in order
    expected = ev.score_masks([to_mask(noisy["mask"][r].astype(np.float32), settings) for r in rows],
                              [synthetic_arrays["mask"][r] > 0 for r in rows], ids)
    assert result.summary == expected
    assert result.summary["dice_pooled"] < 1.0  # specks touching the tumour survive


def test_by_patient_groups_interleaved_slices_and_flushes_short_patients():
    items = [("b", 2, "b2"), ("a", 2, "a2"), ("b", 1, "b1"), ("c", 1, "c1"), ("a", 1, "a1")]
    assert list(ev.by_patient(items, {"a": 2, "b": 2, "c": 3})) == [
        ("b", ["b1", "b2"]), ("a", ["a1", "a2"]), ("c", ["c1"])]


def test_reports_hold_every_figure_and_mark_missing_ones(synthetic_arrays, tmp_path):
    from tfunet.data.sources import DataSplits

    splits = DataSplits(ShuffledSource(synthetic_arrays), {"train": [], "val": [], "test": ["synth_001"]})
    result = ev.evaluate(oracle(synthetic_arrays), splits, "test", progress=False)
    result.summary["dice_tumour_slices"] = None  # as for a split without tumour
    json_path, md_path = ev.write_reports(result, tmp_path / "logs")
    assert (json_path.name, md_path.name) == ("test_metrics.json", "test_metrics.md")
    data = json.loads(json_path.read_text())
    assert data["metrics"]["dice_pooled"] == 1.0 and data["metrics"]["dice_tumour_slices"] is None
    assert set(data["patients"]) == {"synth_001"}
    assert data["settings"] == {"threshold": 0.5, "min_component_pixels": 0,
                                "largest_3d_component": False, "tta_flip": False}
    md = md_path.read_text()
    for label in ("| Dice | 1.0000 |", "| Jaccard |", "| Precision |", "| Recall |", "| F1 |",
                  "Dice pooled over all pixels", "Dice over tumour slices only (", "| n/a |",
                  "Per-patient 3-D Dice, mean", "Per-patient 3-D Dice, median",
                  "Tumour-free slices with any predicted tumour | 0.0%", "| synth_001 | 5 |"):
        assert label in md, label
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["test_metrics.json", "test_metrics.md"]


# --- loading models -----------------------------------------------------------------------------

def copy_model(trained_model, folder: Path) -> Path:
    """A private copy of the session model (and its metadata), safe to tune."""
    folder.mkdir(parents=True, exist_ok=True)
    src = Path(trained_model["model_path"])
    shutil.copy(src, folder / src.name)
    shutil.copy(src.with_suffix(".json"), folder / src.with_suffix(".json").name)
    return folder / src.name


def test_keras_scorer_matches_the_model(trained_model, probability_atol):
    from tfunet.data.synthetic import generate
    from tfunet.loading import float32_model, load_keras_model

    predictor = load_predictor(trained_model["model_path"])
    images = generate(2, 3, 64, seed=5)["image"]
    model, _ = load_keras_model(trained_model["model_path"])
    # Scoring runs the float32 rebuild, whatever policy the model was trained under.
    expected = 1 / (1 + np.exp(-float32_model(model).predict(images.astype(np.float32), verbose=0)))
    np.testing.assert_allclose(predictor.raw(images), expected, atol=1e-5)
    # XLA with padding to a fixed batch gives the same numbers for a short last batch.
    padded = load_predictor(trained_model["model_path"], jit_compile=True, batch_size=8)
    np.testing.assert_allclose(padded.raw(images), expected, atol=1e-4)
    bf16 = load_predictor(trained_model["model_path"], mixed_precision="bfloat16")
    assert bf16.keras_model.layers[2].dtype_policy.compute_dtype == "bfloat16"
    assert bf16.policy == "mixed_bfloat16"
    np.testing.assert_allclose(bf16.raw(images), expected, atol=probability_atol("mixed_bfloat16"))
    assert np.abs(bf16.raw(images) - expected).mean() < 0.02


def test_evaluate_matches_scoring_the_arrays_directly(trained_model):
    from tfunet.data.sources import load_splits
    from tfunet.data.synthetic import generate

    config = trained_model["config"]
    predictor = load_predictor(trained_model["model_path"])
    splits = load_splits(config)
    result = ev.evaluate(predictor, splits, "test", progress=False)
    data = generate(config.num_patients, config.slices_per_patient, config.image_size, config.seed)
    keep = np.isin(data["patient_id"], splits.patients("test"))
    pred = predictor.raw(data["image"][keep]) >= 0.5
    truth = data["mask"][keep] > 0
    expected = metrics.all_scores(pred, truth)
    for key in ("dice", "jaccard", "precision", "recall", "dice_pooled"):
        assert result.summary[key] == pytest.approx(expected[key]), key
    assert result.summary["patient_dice_mean"] == pytest.approx(
        np.mean(list(reference_patient_dice(pred, truth, data["patient_id"][keep]).values())))


def test_load_predictor_errors(trained_model, tmp_path):
    with pytest.raises(TfunetError, match="model not found: .*missing.keras"):
        load_predictor(tmp_path / "missing.keras")
    with pytest.raises(TfunetError, match="unknown mixed-precision choice 'float8'"):
        load_predictor(trained_model["model_path"], mixed_precision="float8")
    lonely = tmp_path / "lonely.keras"
    shutil.copy(trained_model["model_path"], lonely)  # without its metadata
    with pytest.raises(TfunetError, match="model metadata not found: .*lonely.json"):
        load_predictor(lonely)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    shutil.copy(Path(trained_model["model_path"]).with_suffix(".json"), broken.with_suffix(".json"))
    with pytest.raises(TfunetError, match="cannot load model .*broken.keras"):
        load_predictor(broken)


def test_config_and_split_come_from_the_metadata(trained_model, tmp_path):
    meta = read_metadata(trained_model["model_path"])
    config = config_for_model(meta, batch_size=3)
    assert (config.dataset, config.image_size, config.num_patients, config.batch_size) == (
        "synthetic", 64, trained_model["config"].num_patients, 3)
    splits = splits_for_model(config, meta)
    assert splits.split == meta["split"]
    with pytest.raises(TfunetError, match=r"data folder not found: .*nowhere$"):
        config_for_model(meta, dataset="lgg", data_dir=str(tmp_path / "nowhere"))
    wrong = {**meta, "split": {"train": ["synth_000"], "val": ["ghost"], "test": []}}
    with pytest.raises(TfunetError, match="the model's training split does not fit this data .*ghost"):
        splits_for_model(config, wrong)
    assert len(splits_for_model(config, wrong, need_split=False).patients("all")) == config.num_patients


# --- the command ------------------------------------------------------------------------------

def test_cli_end_to_end_tunes_writes_reports_and_figures(trained_model, tmp_path, capsys):
    model = copy_model(trained_model, tmp_path / "models")
    out = tmp_path / "out"
    argv = ["--model", str(model), "--output-dir", str(out), "--tune", "--num-samples", "2",
            "--loss-curves", "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    for label in ("Dice", "Jaccard", "Precision", "Recall", "F1", "Dice pooled", "Dice, tumour slices",
                  "Patient 3-D Dice mean", "Patient 3-D Dice median", "Empty slices w/ prediction"):
        assert f"  {label} " in captured.out, label
    logs = out / "logs"
    for name in ("test_metrics.json", "test_metrics.md", "sample_1.png", "sample_2.png", "loss_curves.png"):
        assert (logs / name).stat().st_size > 0, name
    assert not (logs / "sample_3.png").exists()
    report = json.loads((logs / "test_metrics.json").read_text())
    meta = read_metadata(model)
    # The policy that trained the model and the one that scored it are printed and recorded.
    assert (report["policy"], report["trained_policy"]) == ("float32", trained_model["policy"])
    assert f"scored in float32, trained in {trained_model['policy']}" in captured.out
    # The tuned settings are in the metadata, and the test split was scored with them.
    assert report["settings"] == Settings.from_metadata(meta).__dict__
    assert meta["tuning"]["objective"] == "dice_pooled"
    assert [s["step"] for s in meta["tuning"]["steps"]] == ["tta_flip", "threshold", "min_component_pixels",
                                                            "largest_3d_component"]
    assert "## Tuning on the validation split" in (logs / "test_metrics.md").read_text()
    # The session model is untouched.
    assert "tuning" not in read_metadata(trained_model["model_path"])

    # Flags override the metadata for one run, without writing it.
    assert main(["--model", str(model), "--log-dir", str(tmp_path / "val_logs"), "--split", "val",
                 "--threshold", "0.3", "--tta", "--num-samples", "0", "--no-architecture",
                 "--no-progress"]) == 0
    report = json.loads((tmp_path / "val_logs" / "val_metrics.json").read_text())
    assert report["settings"]["threshold"] == 0.3 and report["settings"]["tta_flip"] is True
    assert read_metadata(model)["threshold"] == meta["threshold"]


def test_cli_tune_threshold_keeps_other_settings(trained_model, tmp_path):
    from tfunet.metadata import update_metadata

    model = copy_model(trained_model, tmp_path / "models")
    update_metadata(model, postprocess={"min_component_pixels": 5})
    assert main(["--model", str(model), "--output-dir", str(tmp_path), "--tune-threshold",
                 "--num-samples", "0", "--no-architecture", "--no-progress"]) == 0
    meta = read_metadata(model)
    assert meta["postprocess"]["min_component_pixels"] == 5
    assert [s["step"] for s in meta["tuning"]["steps"]] == ["threshold"]


def test_cli_architecture_figure_or_install_hint(trained_model, tmp_path, capsys, monkeypatch):
    import keras

    from tfunet.plots import ARCHITECTURE_HELP

    def no_pydot(*args, **kwargs):
        raise ImportError("You must install pydot (`pip install pydot`) for `plot_model` to work.")

    monkeypatch.setattr(keras.utils, "plot_model", no_pydot)
    argv = ["--model", str(trained_model["model_path"]), "--log-dir", str(tmp_path), "--num-samples", "0",
            "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"tfunet-evaluate: note: {ARCHITECTURE_HELP}\n" in err
    assert "pip install" in ARCHITECTURE_HELP and "apt-get install graphviz" in ARCHITECTURE_HELP
    assert not (tmp_path / "model_architecture.png").exists()
    assert not list(tmp_path.glob(".model_architecture*"))  # no temporary file left behind


def test_architecture_figure_with_pydot_and_graphviz(trained_model, tmp_path):
    pytest.importorskip("pydot")
    if not shutil.which("dot"):
        pytest.skip("Graphviz's dot is not installed")
    import keras

    from tfunet.plots import plot_architecture

    model = keras.saving.load_model(trained_model["model_path"], compile=False)
    path = plot_architecture(model, tmp_path / "model_architecture.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("extra, message", [
    (["--tune", "--tune-threshold"], "--tune already tunes the threshold"),
    (["--tune-threshold", "--threshold", "0.4"], "--threshold and --tune/--tune-threshold both set"),
    (["--tune", "--tta"], "--tune chooses every post-processing setting"),
    (["--num-samples", "-1"], "--num-samples must be >= 0, got -1"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--threshold", "1.5"], "threshold must be in (0, 1), got 1.5"),
    (["--split", "train"], "argument --split: invalid choice: 'train'"),
    (["--tune", "--tune-metric", "f1"], "argument --tune-metric: invalid choice: 'f1'"),
    (["--dataset", "lgg", "--data-dir", "/nonexistent/kaggle_3m"],
     "data folder not found: /nonexistent/kaggle_3m\n"),
])
def test_cli_reports_bad_input_in_one_line(trained_model, tmp_path, capsys, extra, message):
    argv = ["--model", str(trained_model["model_path"]), "--log-dir", str(tmp_path), "--no-progress", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tfunet-evaluate: error: {message}")
    assert err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_cli_reports_missing_model_and_training_log(trained_model, tmp_path, capsys):
    assert main(["--model", str(tmp_path / "none.keras")]) == 2
    assert capsys.readouterr().err == f"tfunet-evaluate: error: model not found: {tmp_path / 'none.keras'}\n"
    model = copy_model(trained_model, tmp_path / "models")
    from tfunet.metadata import update_metadata

    meta = read_metadata(model)
    update_metadata(model, config={**meta["config"], "output_dir": str(tmp_path / "elsewhere")})
    assert main(["--model", str(model), "--log-dir", str(tmp_path / "logs"), "--loss-curves",
                 "--num-samples", "0", "--no-architecture", "--no-progress"]) == 2
    assert "error: --loss-curves: no train_log.csv in" in capsys.readouterr().err


# --- exported models (tfunet.export) -------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(trained_model, tmp_path_factory):
    from tfunet import export

    out = tmp_path_factory.mktemp("export")
    export.export(trained_model["model_path"], saved_model=out / "serving", tflite=out / "model.tflite")
    return {"saved_model": out / "serving", "tflite": out / "model.tflite"}


@pytest.mark.parametrize("kind", ["saved_model", "tflite"])
def test_exported_models_score_like_the_keras_model(trained_model, exported, kind):
    from tfunet.data.sources import load_splits

    served = load_predictor(exported[kind])
    assert served.keras_model is None and served.builtin_tta is False
    splits = load_splits(trained_model["config"])
    keras_result = ev.evaluate(load_predictor(trained_model["model_path"]), splits, "val", progress=False)
    result = ev.evaluate(served, splits, "val", progress=False)
    assert result.summary["num_slices"] == keras_result.summary["num_slices"]
    for key in ("dice", "dice_pooled", "patient_dice_mean"):
        assert result.summary[key] == pytest.approx(keras_result.summary[key], abs=0.01), key


def test_cli_scores_a_saved_model_but_does_not_tune_it(exported, tmp_path, capsys):
    saved_model = exported["saved_model"]
    base = ["--model", str(saved_model), "--log-dir", str(tmp_path), "--num-samples", "0", "--no-progress"]
    assert main(base) == 0
    assert "model_architecture.png needs a .keras model" in capsys.readouterr().err
    assert json.loads((tmp_path / "test_metrics.json").read_text())["model"] == str(saved_model)
    assert main([*base, "--tune-threshold"]) == 2
    assert "is an exported model, whose settings are fixed at export" in capsys.readouterr().err
    assert main([*base, "--tta"]) == 2
    assert "was exported with flip TTA off; re-export it" in capsys.readouterr().err
    assert main([*base, "--mixed-precision", "bfloat16"]) == 2
    assert "--mixed-precision bfloat16 needs a .keras model" in capsys.readouterr().err
    assert main([*base, "--precision", "bfloat16"]) == 2  # the deprecated alias still works, and says so
    err = capsys.readouterr().err
    assert "--precision is deprecated" in err and "--mixed-precision bfloat16 needs a .keras model" in err


# --- real data -----------------------------------------------------------------------------------

def test_cli_scores_real_lgg_slices(trained_model, lgg_dir, tmp_path, capsys):
    """The synthetic model on three real patients: the LGG path runs end to end (not accuracy)."""
    root = tmp_path / "kaggle_3m"
    root.mkdir()
    for patient in ("TCGA_CS_4943_20000902", "TCGA_CS_6667_20011105", "TCGA_HT_7680_19970202"):
        (root / patient).symlink_to(lgg_dir / patient, target_is_directory=True)
    argv = ["--model", str(trained_model["model_path"]), "--dataset", "lgg", "--data-dir", str(root),
            "--cache-dir", str(tmp_path / "cache"), "--split", "all", "--num-samples", "1",
            "--no-architecture", "--log-dir", str(tmp_path / "logs"), "--progress"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "logs" / "all_metrics.json").read_text())
    expected = sum(len([f for f in (root / p).glob("*.tif") if not f.stem.endswith("_mask")])
                   for p in report["patients"])
    assert report["dataset"] == "lgg" and report["metrics"]["num_patients"] == 3
    assert report["metrics"]["num_slices"] == expected
    assert (tmp_path / "logs" / "sample_1.png").is_file()
    assert "predicting" in capsys.readouterr().err  # the progress bar, asked for
    assert main(argv[:-1]) == 0
    assert "predicting" not in capsys.readouterr().err  # stderr is no terminal here: no bar


def test_scoring_new_patients_needs_no_training_split(trained_model, lgg_dir, tmp_path):
    """A model scores a folder of patients it never saw: `--split all` uses no split (not the
    model's, nor its split file), and a split file used only for scoring may hold test patients
    alone."""
    from tfunet.data.split import validate_split

    model = copy_model(trained_model, tmp_path / "models")
    foreign = tmp_path / "training_split.json"
    foreign.write_text(json.dumps({"train": ["synth_000"], "val": ["synth_001"], "test": ["synth_002"]}))
    update_metadata(model, config={"split_file": str(foreign)})
    root = tmp_path / "kaggle_3m"
    root.mkdir()
    patients = ("TCGA_CS_4943_20000902", "TCGA_CS_6667_20011105")
    for patient in patients:
        (root / patient).symlink_to(lgg_dir / patient, target_is_directory=True)
    common = dict(dataset="lgg", data_dir=str(root), cache_dir=str(tmp_path / "cache"), num_samples=0,
                  architecture=False, progress=False)
    result = ev.evaluate_model(model, split="all", log_dir=tmp_path / "all", **common)
    assert result.summary["num_patients"] == 2
    test_only = tmp_path / "test_only.json"
    test_only.write_text(json.dumps({"train": [], "val": [], "test": [patients[1]]}))
    result = ev.evaluate_model(model, split="test", split_file=str(test_only), log_dir=tmp_path / "t", **common)
    assert list(result.summary["patients"]) == [patients[1]]
    with pytest.raises(TfunetError, match="split has no training patient"):  # training still needs one
        validate_split({"train": [], "val": [], "test": [patients[1]]}, patients)
