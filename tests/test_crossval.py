"""K-fold cross-validation (tfunet.crossval), fold files, and ensembles through every inference path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from tfunet.config import make_config
from tfunet.crossval import (OOF_FILE, choose_postprocess, cross_fitted, load_oof, plan_folds, save_oof,
                             summarize_folds)
from tfunet.data.sources import make_source
from tfunet.data.split import make_folds, validate_folds, validate_split, write_split
from tfunet.errors import TfunetError
from tfunet.export import export
from tfunet.loading import find_members
from tfunet.metadata import read_metadata
from tfunet.postprocess import Settings, ValidationPatient
from tfunet.predictor import load_predictor
from tfunet.resume import WALL_FILE

# --- folds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_patients, k", [(10, 2), (13, 5), (64, 5), (7, 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_folds_cover_every_patient_once_and_balance_burden(num_patients, k, seed):
    rng = np.random.default_rng(seed)
    burden = {f"p{i:02d}": int(b) for i, b in enumerate(rng.integers(0, 20000, num_patients))}
    folds = make_folds(burden, k, seed=seed)
    assert len(folds) == k
    everyone = [p for fold in folds for p in fold]
    assert sorted(everyone) == sorted(burden)  # disjoint, and each patient exactly once
    sizes = [len(fold) for fold in folds]
    assert max(sizes) - min(sizes) <= 1
    totals = [sum(burden[p] for p in fold) for fold in folds]
    # One patient per burden stratum and fold: fold totals differ by at most the overall range
    # of burdens (full strata) plus one patient (the last, partial stratum).
    assert max(totals) - min(totals) <= 2 * max(burden.values())
    assert make_folds(burden, k, seed=seed) == folds  # seeded


def test_folds_spread_small_and_tumour_free_patients():
    # Patients 0-3 have no tumour, 4-7 small ones, 8-11 large ones: each of 4 folds gets one of each.
    burden = {f"p{i:02d}": (0 if i < 4 else 100 * i if i < 8 else 10000 * i) for i in range(12)}
    for fold in make_folds(burden, 4, seed=3):
        assert sorted(int(p[1:]) // 4 for p in fold) == [0, 1, 2]
    # Balanced by burden, far better than cutting the sorted list: totals 1..10 into 2 folds.
    folds = make_folds({f"q{i:02d}": i for i in range(1, 11)}, 2, seed=0)
    totals = [sum(int(p[1:]) for p in fold) for fold in folds]
    assert abs(totals[0] - totals[1]) <= 5  # a cut of the sorted list: 15 against 40


@pytest.mark.parametrize("split, message", [
    ({"folds": [["a"]]}, "at least 2 patient lists"),
    ({"folds": [["a"], ["a", "b"]]}, "patient a is in both 'fold 0' and 'fold 1'"),
    ({"folds": [["a"], ["zz"]]}, "patient zz in split 'fold 1' is not in the dataset"),
    ({"folds": [["a"], ["b"]], "test": ["b"]}, "patient b is in both 'fold 1' and 'test'"),
    ({"folds": [["a"], []]}, "split fold 1 has no patient"),
    ({"folds": [["a"], ["b"]], "train": ["c"]}, "its 'train' list must be empty"),
])
def test_bad_fold_files(split, message):
    with pytest.raises(TfunetError, match=message):
        validate_folds(split, ["a", "b", "c"])


def test_split_files_old_and_new_formats():
    ids = ["a", "b", "c", "d"]
    old = {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    assert validate_split(old, ids) == old
    # A fold file, used for scoring: every fold patient counts as training, test stays test.
    assert validate_split({"folds": [["a"], ["b", "c"]], "test": ["d"]}, ids) == {
        "train": ["a", "b", "c"], "val": [], "test": ["d"]}


def _config(tmp_path, **extra):
    return make_config({"image_size": 32, "base_filters": 4, "depth": 2, "num_patients": 7,
                        "slices_per_patient": 4, "epochs": 1, "batch_size": 8, "folds": 3,
                        "output_dir": str(tmp_path), **extra})


def test_plan_folds_from_flags_and_back_from_its_split_file(tmp_path):
    config = _config(tmp_path)
    source = make_source(config)
    plan = plan_folds(config, source)
    assert len(plan["folds"]) == 3 and plan["test"] == []
    assert sorted(p for fold in plan["folds"] for p in fold) == sorted(source.patients())
    assert set(plan["tumour_pixels"]) == set(source.patients())
    write_split(plan, tmp_path / "split.json")
    again = plan_folds(_config(tmp_path, folds=0, split_file=str(tmp_path / "split.json"), seed=9), source)
    assert again["folds"] == plan["folds"]  # read back, not re-dealt with the new seed
    with pytest.raises(TfunetError, match="--folds 4 disagrees with the 3 folds"):
        plan_folds(_config(tmp_path, folds=4, split_file=str(tmp_path / "split.json")), source)
    # An old {train, val, test} file: its train and val patients are dealt, its test kept out.
    ids = sorted(source.patients())
    write_split({"train": ids[:4], "val": ids[4:6], "test": ids[6:]}, tmp_path / "old.json")
    from_old = plan_folds(_config(tmp_path, split_file=str(tmp_path / "old.json")), source)
    assert from_old["test"] == ids[6:]
    assert sorted(p for fold in from_old["folds"] for p in fold) == ids[:6]


# --- post-processing chosen on out-of-fold data ----------------------------------------------------

def _oof_patient(pid: str, spurious: bool) -> ValidationPatient:
    """A 3-slice patient with a 36-pixel tumour in slice 1, predicted at 0.8, plus (if `spurious`)
    a confident false 25-pixel blob in slice 2: too big for any component-size candidate that
    keeps the tumour, but not the largest 3-D component. The flipped predictions are worse."""
    truth = np.zeros((3, 20, 20, 1), bool)
    truth[1, 4:10, 4:10] = True
    probs = np.where(truth, 0.8, 0.05).astype(np.float32)
    if spurious:
        probs[2, 13:18, 13:18] = 0.9
    probs_tta = probs.copy()
    probs_tta[1, 4:10, 4:7] = 0.2  # half the tumour lost in the flipped average
    return ValidationPatient(truth, probs, probs_tta, pid)


def test_postprocessing_adopts_a_step_that_helps_and_rejects_one_that_hurts():
    patients = [_oof_patient(f"p{i}", spurious=i % 2 == 0) for i in range(4)]
    chosen, steps = choose_postprocess(patients, Settings())
    by_step = {step["step"]: step for step in steps}
    assert chosen.largest_3d_component  # removes the stray blob: helps
    scores = {c["value"]: c["score"] for c in by_step["largest_3d_component"]["scores"]}
    assert scores[True] > scores[False]
    assert not chosen.tta_flip  # the flipped average loses tumour: hurts
    scores = {c["value"]: c["score"] for c in by_step["tta_flip"]["scores"]}
    assert scores[True] < scores[False]
    assert chosen.threshold <= 0.8  # a threshold above the tumour's probability would lose it


def test_oof_files_round_trip_and_fold_summary(tmp_path):
    patients = [_oof_patient("a", True), _oof_patient("b", False)]
    save_oof(patients, tmp_path / OOF_FILE)
    loaded = load_oof(tmp_path / OOF_FILE)
    assert [p.patient_id for p in loaded] == ["a", "b"]
    for before, after in zip(patients, loaded):
        np.testing.assert_array_equal(after.truth, before.truth)
        np.testing.assert_allclose(after.probs, before.probs, atol=1e-3)  # stored as float16
    table = summarize_folds([loaded[:1], loaded[1:]], Settings())
    assert table["folds"][1]["patient_dice_mean"] == pytest.approx(1.0)  # no stray blob
    assert table["folds"][0]["patient_dice_mean"] == pytest.approx(72 / 97)  # 25 stray pixels
    assert table["mean"]["patient_dice_mean"] == pytest.approx((1.0 + 72 / 97) / 2)
    assert table["sd"]["patient_dice_mean"] == pytest.approx(np.std([1.0, 72 / 97], ddof=1))
    assert table["all_patients"]["missed_patients"] == 0


def test_cross_fitting_scores_each_fold_with_a_choice_made_on_the_other_folds():
    with_blob = [_oof_patient(f"a{i}", spurious=True) for i in range(2)]
    clean = [_oof_patient(f"b{i}", spurious=False) for i in range(2)]
    on_all, _ = choose_postprocess(with_blob + clean, Settings())
    assert on_all.largest_3d_component
    optimistic = summarize_folds([with_blob, clean], on_all)
    assert optimistic["mean"]["patient_dice_mean"] == pytest.approx(1.0)  # every blob removed
    table, chosen = cross_fitted([with_blob, clean], Settings())
    assert not chosen[0].largest_3d_component  # chosen on the clean fold, where it cannot help
    assert chosen[1].largest_3d_component  # chosen on the fold with blobs
    assert table["folds"][0]["patient_dice_mean"] == pytest.approx(72 / 97)  # so its blobs stay
    assert table["folds"][1]["patient_dice_mean"] == pytest.approx(1.0)
    assert table["all_patients"]["patient_dice_mean"] == pytest.approx((72 / 97 + 1.0) / 2)
    assert table["per_patient_dice"] == pytest.approx({"a0": 72 / 97, "a1": 72 / 97, "b0": 1.0, "b1": 1.0})


# --- the whole K-fold run, its resume, and its ensemble -------------------------------------------

CV_RUN = dict(image_size=32, base_filters=4, depth=2, num_patients=6, slices_per_patient=6, epochs=3,
              batch_size=8, lr=1e-2)


def _cli(tmp_path, **extra):
    args = ["tfunet-train", "--folds", "2", "--output-dir", str(tmp_path)]
    for key, value in {**CV_RUN, **extra}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, kill_when_written):
    """A 2-fold run that is killed in its second fold and then rerun to the end."""
    out = tmp_path_factory.mktemp("cv")
    backup = out / "logs" / "fold_1" / "backup" / "training_metadata.json"
    kill_when_written(_cli(out), backup, ENV)
    first_seconds = json.loads((out / "logs" / WALL_FILE).read_text())["seconds"]
    second = subprocess.run(_cli(out), capture_output=True, text=True, timeout=600, env=ENV)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"out": out, "stdout": second.stdout, "first_seconds": first_seconds}


def test_killed_cv_run_resumes_at_its_fold_and_epoch(cv_run):
    out, stdout = cv_run["out"], cv_run["stdout"]
    assert "fold 1 of 2 already done" in stdout
    assert "tfunet-train: resuming after epoch" in stdout
    assert "fold 2 of 2, epoch 3/3, elapsed" in stdout  # the progress line
    for k in (0, 1):
        rows = (out / "logs" / f"fold_{k}" / "train_log.csv").read_text().strip().splitlines()[1:]
        assert [int(row.split(",")[0]) for row in rows] == [0, 1, 2]  # each epoch exactly once
        meta = read_metadata(out / "saved_models" / f"fold_{k}" / "best_model.keras")
        assert meta["selection"] == "last epoch" and meta["best"]["epoch"] == 3  # nothing chosen
        assert meta["fold"] == k and (out / "logs" / f"fold_{k}" / OOF_FILE).is_file()
        assert not (out / "logs" / f"fold_{k}" / "backup").exists()


def test_resumed_cv_run_counts_the_killed_process_in_its_wall_time(cv_run):
    first = cv_run["first_seconds"]  # what the killed process had saved: fold 1 at least
    assert first > 0
    line = next(line for line in cv_run["stdout"].splitlines() if line.startswith("tfunet-train: fold 2 of 2, epoch"))
    minutes, seconds = line.rsplit("elapsed ", 1)[1].split(":")
    assert 60 * int(minutes) + int(seconds) >= int(first)  # the progress goes on from there
    report = json.loads((cv_run["out"] / "logs" / "cv_metrics.json").read_text())
    assert report["wall_seconds"] > first


def test_cv_run_writes_report_split_file_and_ensemble_metadata(cv_run):
    out = cv_run["out"]
    split = json.loads((out / "logs" / "split.json").read_text())
    folds = split["folds"]
    assert len(folds) == 2 and not set(folds[0]) & set(folds[1])
    for k in (0, 1):  # each fold trained on the other fold and held its own out
        meta = read_metadata(out / "saved_models" / f"fold_{k}" / "best_model.keras")
        assert meta["split"]["val"] == folds[k] and meta["split"]["train"] == folds[1 - k]
    report = json.loads((out / "logs" / "cv_metrics.json").read_text())
    assert report["folds"] == 2 and report["patients"] == CV_RUN["num_patients"]
    for name in ("default", "chosen", "cross_fitted"):
        assert len(report[name]["folds"]) == 2
        for key in ("patient_dice_mean", "patient_dice_median", "dice_tumour_slices", "dice_pooled",
                    "empty_slices_with_prediction", "missed_patients"):
            assert key in report[name]["mean"] and key in report[name]["sd"]
    assert len(report["postprocess"]["cross_fitted"]) == 2  # one choice per fold, made on the other
    markdown = (out / "logs" / "cv_metrics.md").read_text()
    assert "mean ± sd over folds" in markdown and "(cross-fitted)" in markdown
    assert "post-processing cross-fitted" in cv_run["stdout"]
    assert "tumour patients missed entirely" in cv_run["stdout"]
    ensemble = read_metadata(out / "saved_models")
    assert ensemble["ensemble"]["members"] == ["fold_0/best_model.keras", "fold_1/best_model.keras"]
    assert ensemble["tuning"]["split"] == "out-of-fold"
    assert ensemble["postprocess"] == report["postprocess"]["chosen"]["postprocess"]
    assert find_members(out / "saved_models") == [out / "saved_models" / f"fold_{k}" / "best_model.keras"
                                                  for k in (0, 1)]


def test_ensemble_scores_a_folder_and_has_no_test_split(cv_run, tmp_path):
    from tfunet.evaluate import evaluate_model

    result = evaluate_model(cv_run["out"] / "saved_models", split="all", num_samples=0, architecture=False,
                            log_dir=tmp_path)
    assert result.summary["num_patients"] == CV_RUN["num_patients"]
    with pytest.raises(TfunetError, match="split 'test' has no patients"):
        evaluate_model(cv_run["out"] / "saved_models", num_samples=0, architecture=False, log_dir=tmp_path)


# --- an ensemble of two identical models is that model ---------------------------------------------

@pytest.fixture(scope="module")
def twin(trained_model, tmp_path_factory):
    """The session model twice: as a K-fold folder and as two .keras files."""
    out = tmp_path_factory.mktemp("twin")
    source = trained_model["model_path"]
    for k in (0, 1):
        (out / f"fold_{k}").mkdir()
        shutil.copy(source, out / f"fold_{k}" / "best_model.keras")
        shutil.copy(source.with_suffix(".json"), out / f"fold_{k}" / "best_model.json")
    return {"single": source, "folder": out,
            "files": [out / "fold_0" / "best_model.keras", out / "fold_1" / "best_model.keras"]}


@pytest.fixture(scope="module")
def images(trained_model):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (3, trained_model["config"].image_size, trained_model["config"].image_size, 3),
                        dtype=np.uint8)


@pytest.mark.parametrize("form", ["folder", "files"])
def test_keras_ensemble_of_two_identical_models_is_the_model(twin, images, form):
    single = load_predictor(twin["single"])
    ensemble = load_predictor(twin[form])
    assert len(ensemble.forwards) == 2
    np.testing.assert_allclose(ensemble.raw(images), single.raw(images), atol=1e-6)
    odd = np.ascontiguousarray(images[:, :40, :50])  # through the serving computation, any size
    np.testing.assert_allclose(ensemble(odd), single(odd), atol=1e-6)


def test_exported_ensemble_of_two_identical_models_is_the_model(twin, images, tmp_path):
    one = export(twin["single"], saved_model=tmp_path / "one" / "1", tflite=tmp_path / "one.tflite")
    two = export(twin["folder"], saved_model=tmp_path / "two" / "1", tflite=tmp_path / "two.tflite")
    assert one["members"] == 1 and two["members"] == 2
    served = [tf.saved_model.load(w["saved_model"]).signatures["serving_default"](images=tf.constant(images))
              for w in (one, two)]
    np.testing.assert_allclose(served[1]["probabilities"].numpy(), served[0]["probabilities"].numpy(), atol=1e-6)
    np.testing.assert_array_equal(served[1]["mask"].numpy(), served[0]["mask"].numpy())

    def tflite(path):
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        probs = []
        for image in images.astype(np.float32):
            interpreter.set_tensor(inp["index"], image[None])
            interpreter.invoke()
            probs.append(interpreter.get_tensor(out["index"]))
        return inp["shape"].tolist(), np.concatenate(probs)

    (shape_one, probs_one), (shape_two, probs_two) = tflite(one["tflite"]), tflite(two["tflite"])
    assert shape_one == shape_two  # the same signature
    np.testing.assert_allclose(probs_two, probs_one, atol=1e-5)
    meta = read_metadata(two["saved_model"])
    assert len(meta["ensemble"]["members"]) == 2
    assert read_metadata(two["tflite"])["ensemble"] == meta["ensemble"]


@pytest.mark.parametrize("models, message", [
    (["a.keras", "b.tflite"], "several --model values make an ensemble of .keras files; .*b.tflite is not one"),
    (["missing.keras", "other.keras"], "model not found"),
])
def test_bad_ensembles(models, message, tmp_path):
    with pytest.raises(TfunetError, match=message):
        find_members([tmp_path / m for m in models])


def test_folder_that_is_no_model(tmp_path):
    with pytest.raises(TfunetError, match="not a SavedModel .*, nor a K-fold run's saved_models/"):
        load_predictor(tmp_path)


def test_commands_take_several_models(twin, tmp_path, capsys):
    from tfunet.cli.evaluate import main as evaluate_main
    from tfunet.cli.export import main as export_main

    files = [str(f) for f in twin["files"]]
    assert evaluate_main(["--model", *files, "--split", "all", "--num-samples", "0", "--no-architecture",
                          "--log-dir", str(tmp_path / "logs")]) == 0
    assert (tmp_path / "logs" / "all_metrics.json").is_file()
    assert evaluate_main(["--model", *files, "--tune", "--log-dir", str(tmp_path)]) == 2
    assert "tune one model, or a K-fold run's saved_models/ folder" in capsys.readouterr().err
    assert export_main(["--model", *files, "--saved-model", str(tmp_path / "serving" / "1")]) == 0
    assert json.loads(capsys.readouterr().out)["members"] == 2
