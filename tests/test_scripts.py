"""The evidence scripts: every ablation row is a valid tfunet-train command at the scales the
docs run it at, and rows of two ablation files pair only when they can."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from tfunet.cli.train import build_parser
from tfunet.config import make_config

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import ablate  # noqa: E402
import pair_rows  # noqa: E402
import pool_pairs  # noqa: E402
import postprocess_crossfit  # noqa: E402
import recipe_budget  # noqa: E402
import score_native  # noqa: E402

# The --base of every batch in docs/recipes.md.
BASES = (ablate.BASE,
         "--image-size 64 --base-filters 16 --epochs 10 --validate-every 10",
         "--image-size 64 --base-filters 16 --epochs 32 --validate-every 16",
         "--recipe fast --epochs 10 --validate-every 10",
         "--validate-every 10")


def given(flags: list[str]) -> dict:
    """The options a command line sets (argparse leaves the others None)."""
    args = vars(build_parser().parse_args(flags))
    args.pop("config")
    return {key: value for key, value in args.items() if value is not None}


@pytest.mark.parametrize("row", sorted(ablate.ROWS))
def test_ablation_row_is_a_valid_command_whose_flags_win(row, tmp_path):
    flags = shlex.split(ablate.ROWS[row])
    for base in BASES:
        command = ["--dataset", "lgg", "--data-dir", str(tmp_path), *shlex.split(base), *flags]
        config = make_config(given(command))  # validates: raises on a bad combination
        for key, value in given(flags).items():
            alone = make_config({"dataset": "lgg", key: value}, validate=False)
            assert getattr(config, key) == getattr(alone, key), f"{row} on {base!r}: {key}"


def ablation_file(path: Path, base: str, rows: dict[str, dict[str, float]]) -> str:
    path.write_text(json.dumps({"base": base, "rows": {name: {"per_patient_dice": dice}
                                                        for name, dice in rows.items()}}))
    return str(path)


@pytest.mark.parametrize("row, reference, mean, better, worse", [
    ({"a": 0.5, "b": 0.7, "c": 0.9}, {"a": 0.4, "b": 0.7, "c": 0.6}, (0.1 + 0.0 + 0.3) / 3, 2, 0),
    ({"a": 0.2, "b": 0.3}, {"a": 0.4, "b": 0.6}, -0.25, 0, 2),
])
def test_pair_rows_pairs_by_patient_across_files(tmp_path, row, reference, mean, better, worse):
    shared = {p: 0.5 for p in row}
    first = ablation_file(tmp_path / "a.json", "--x", {"lever": row, "ref": shared})
    second = ablation_file(tmp_path / "b.json", "--x", {"other": reference, "ref": {**shared, next(iter(row)): 0.6}})
    result = pair_rows.main([f"{first}:lever", f"{second}:other"])
    assert result["paired_patient_dice"]["mean"] == pytest.approx(mean)
    assert (result["paired_patient_dice"]["better"], result["paired_patient_dice"]["worse"]) == (better, worse)
    # The row both files hold repeats on all patients but one.
    assert result["shared_rows"]["ref"] == {"patients": len(row), "identical": len(row) - 1,
                                            "max_abs_diff": pytest.approx(0.1)}


@pytest.mark.parametrize("second_base, second_patients, message", [
    ("--y", ("a", "b"), "different --base"),
    ("--x", ("a", "c"), "different patients"),
])
def test_pair_rows_refuses_rows_that_do_not_pair(tmp_path, second_base, second_patients, message):
    first = ablation_file(tmp_path / "a.json", "--x", {"lever": {"a": 0.5, "b": 0.6}})
    second = ablation_file(tmp_path / "b.json", second_base, {"ref": {p: 0.5 for p in second_patients}})
    with pytest.raises(SystemExit, match=message):
        pair_rows.main([f"{first}:lever", f"{second}:ref"])


def test_pair_rows_names_a_missing_row(tmp_path):
    first = ablation_file(tmp_path / "a.json", "--x", {"lever": {"a": 0.5, "b": 0.6}})
    with pytest.raises(SystemExit, match="no finished row 'absent'.*lever"):
        pair_rows.main([f"{first}:lever", f"{first}:absent"])


def pool_file(path: Path, row: dict, reference: dict, fitted: tuple[dict, dict] | None = None) -> str:
    rows = {"lever": {"per_patient_dice": row}, "ref": {"per_patient_dice": reference}}
    if fitted:
        rows["lever"]["cross_fitted_per_patient_dice"], rows["ref"]["cross_fitted_per_patient_dice"] = fitted
    path.write_text(json.dumps({"base": "", "rows": rows}))
    return str(path)


def test_pool_pairs_averages_each_patient_over_replicates_before_the_standard_error(tmp_path):
    first = pool_file(tmp_path / "a.json", {"a": 0.6, "b": 0.4}, {"a": 0.5, "b": 0.5},
                      fitted=({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}))
    second = pool_file(tmp_path / "b.json", {"a": 0.8, "b": 0.6, "c": 0.3}, {"a": 0.5, "b": 0.5, "c": 0.5})
    result = pool_pairs.main(["lever", "ref", first, second])
    # Per patient: a (+0.1, +0.3) -> +0.2, b (-0.1, +0.1) -> 0, c (-0.2) -> -0.2.
    assert result["default"]["pooled"] == {"patients": 3, "replicates": 2, "mean": pytest.approx(0.0, abs=1e-12),
                                           "se": pytest.approx(0.2 / 3 ** 0.5), "better": 1, "worse": 1}
    assert [p["mean"] for p in result["default"]["per_file"]] == [pytest.approx(0.0, abs=1e-12), pytest.approx(0.2 / 3)]
    assert "cross_fitted" not in result  # the second file has no cross-fitted table


@pytest.mark.parametrize("file, row, message", [
    ("a.json", "other", "a.json has no finished row 'other'"),
    ("absent.json", "lever", "absent.json not found"),
])
def test_pool_pairs_names_a_bad_file(tmp_path, file, row, message):
    pool_file(tmp_path / "a.json", {"a": 0.6, "b": 0.4}, {"a": 0.5, "b": 0.5})
    with pytest.raises(SystemExit, match=message):
        pool_pairs.main([row, "ref", str(tmp_path / file)])


def finished_row(out: Path, name: str, dice: dict[str, float], fitted: dict[str, float] | None = None) -> None:
    """A row folder as `tfunet-train --folds` leaves it, reduced to what ablate.py reads;
    `fitted`: its cross-fitted per-patient Dice (reports before that table have none)."""
    def table(per_patient):
        return {"mean": {key: 0.5 for key in ablate.FIGURES}, "sd": {key: 0.1 for key in ablate.FIGURES},
                "per_patient_dice": per_patient}

    report = {"wall_seconds": 60.0, "patients": len(dice), "default": table(dice), "chosen": table(dice),
              "postprocess": {"chosen": {"describe": "threshold 0.5"}}}
    if fitted:
        report["cross_fitted"] = table(fitted)
    logs = out / name / "logs"
    logs.mkdir(parents=True)
    (logs / "cv_metrics.json").write_text(json.dumps(report))


def test_ablate_no_train_reports_finished_rows_and_touches_nothing(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("--no-train started a training run")

    monkeypatch.setattr(ablate, "train_lgg", no_training)
    (tmp_path / "folds.json").write_text("{}")
    finished_row(tmp_path, "baseline", {"a": 0.5, "b": 0.6}, fitted={"a": 0.6, "b": 0.6})
    finished_row(tmp_path, "foreground_third", {"a": 0.7, "b": 0.5}, fitted={"a": 0.7, "b": 0.7})
    finished_row(tmp_path, "dice_weight_2", {"a": 0.5, "b": 0.5})  # a report without the cross-fitted table
    result = ablate.main(["--data-dir", str(tmp_path), "--out", str(tmp_path), "--no-train",
                          "--rows", "baseline", "foreground_third", "dice_weight_2", "no_augment"])
    assert result["rows"]["no_augment"]["error"] == "not finished"
    assert result["rows"]["foreground_third"]["vs_reference_patient_dice"]["mean"] == pytest.approx(0.05)
    assert result["rows"]["foreground_third"]["vs_reference_cross_fitted"]["mean"] == pytest.approx(0.1)
    assert "vs_reference_cross_fitted" not in result["rows"]["dice_weight_2"]
    assert not (tmp_path / "ablation.json").exists()


def test_ablate_saves_each_finished_row_paired_before_the_next_trains(tmp_path, monkeypatch):
    def train_then_stop(name, data_dir, folds, seed, row_dir, flags, log, append):
        if name == "no_augment":  # the run is stopped while training its second row
            raise KeyboardInterrupt
        finished_row(tmp_path, name, {"a": 0.7, "b": 0.5})
        return 0

    monkeypatch.setattr(ablate, "train_lgg", train_then_stop)
    (tmp_path / "folds.json").write_text("{}")
    finished_row(tmp_path, "baseline", {"a": 0.5, "b": 0.6})
    with pytest.raises(KeyboardInterrupt):
        ablate.main(["--data-dir", str(tmp_path), "--out", str(tmp_path),
                     "--rows", "baseline", "foreground_third", "no_augment"])
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["rows"]["foreground_third"]["vs_reference_patient_dice"]["mean"] == pytest.approx(0.05)
    assert "no_augment" not in saved["rows"]


def test_ablate_records_a_failed_row_and_goes_on(tmp_path, monkeypatch):
    def fail_one(name, data_dir, folds, seed, row_dir, flags, log, append):
        if name == "no_augment":
            return 3
        finished_row(tmp_path, name, {"a": 0.7, "b": 0.5})
        return 0

    monkeypatch.setattr(ablate, "train_lgg", fail_one)
    (tmp_path / "folds.json").write_text("{}")
    finished_row(tmp_path, "baseline", {"a": 0.5, "b": 0.6})
    ablate.main(["--data-dir", str(tmp_path), "--out", str(tmp_path),
                 "--rows", "baseline", "no_augment", "foreground_third"])
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["rows"]["no_augment"]["error"] == f"exit 3; see {tmp_path / 'no_augment'}.log"
    assert saved["rows"]["foreground_third"]["vs_reference_patient_dice"]["mean"] == pytest.approx(0.05)


def test_ablate_no_train_with_an_unfinished_reference_reports_rows_unpaired(tmp_path):
    # Rows run fold-interleaved: the candidate finished before the reference it is paired with.
    (tmp_path / "folds.json").write_text("{}")
    finished_row(tmp_path, "foreground_third", {"a": 0.7, "b": 0.5})
    result = ablate.main(["--data-dir", str(tmp_path), "--out", str(tmp_path), "--no-train",
                          "--rows", "baseline", "foreground_third"])
    assert result["rows"]["baseline"]["error"] == "not finished"
    assert result["rows"]["foreground_third"]["per_patient_dice"] == {"a": 0.7, "b": 0.5}
    assert "vs_reference_patient_dice" not in result["rows"]["foreground_third"]


def test_ablate_markdown_shows_every_row_without_the_base_and_the_cross_fitted_pairing(tmp_path, capsys):
    (tmp_path / "folds.json").write_text("{}")
    finished_row(tmp_path, "baseline", {"a": 0.5, "b": 0.6}, fitted={"a": 0.6, "b": 0.6})
    finished_row(tmp_path, "foreground_third", {"a": 0.7, "b": 0.5}, fitted={"a": 0.7, "b": 0.7})
    ablate.main(["--data-dir", str(tmp_path), "--out", str(tmp_path), "--no-train", "--markdown",
                 "--base", "--epochs 2", "--rows", "baseline", "foreground_third", "no_augment"])
    head, rule, baseline, foreground, unfinished = capsys.readouterr().out.strip().splitlines()
    assert head.count("|") == rule.count("|") == baseline.count("|") == unfinished.count("|") == 11
    assert "cross-fitted post-processing, vs baseline" in head
    assert foreground.startswith("| foreground_third | `--foreground-share 0.33` | 0.500 ± 0.100 |")
    assert "| 0.500 ± 0.100: +0.100 ± 0.000 (better 2, worse 0 of 2) | 1 min |" in foreground
    assert unfinished.startswith("| no_augment | `--no-augment` | not finished |")


def test_ablate_no_train_on_an_empty_folder_says_so(tmp_path):
    with pytest.raises(SystemExit, match="nothing has run"):
        ablate.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "none"), "--no-train"])
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("finished", [False, True])
def test_score_native_names_a_run_that_is_not_a_finished_cross_validation(tmp_path, finished):
    run = tmp_path / "row"
    if finished:  # a one-split run's folder: logs, but no cv_metrics.json
        (run / "logs").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"cv_metrics.json not found: is .*row a finished `tfunet-train --folds` run"):
        score_native.main([str(run), "--data-dir", str(tmp_path)])


def oof_patient(pid: str, blob: bool):
    """A 2-slice patient whose 36-pixel tumour is predicted at 0.8, with (if `blob`) a confident
    false 25-pixel blob on the other slice, which only the largest 3-D component removes (every
    component-size candidate small enough to keep the tumour keeps the blob)."""
    import numpy as np

    from tfunet.postprocess import ValidationPatient

    truth = np.zeros((2, 20, 20, 1), bool)
    truth[0, 2:8, 2:8] = True
    probs = np.where(truth, 0.8, 0.05).astype(np.float32)
    if blob:
        probs[1, 12:17, 12:17] = 0.9
    return ValidationPatient(truth, probs, probs.copy(), pid)


def finished_cv_run(run: Path, per_fold: list) -> None:
    """A cross-validation's folder as tfunet-train --folds leaves it: its report and out-of-fold files."""
    from tfunet.crossval import OOF_FILE, held_out_report, save_oof
    from tfunet.postprocess import Settings

    for k, patients in enumerate(per_fold):
        (run / "logs" / f"fold_{k}").mkdir(parents=True)
        save_oof(patients, run / "logs" / f"fold_{k}" / OOF_FILE)
    report, _, _ = held_out_report(per_fold, Settings())
    (run / "logs" / "cv_metrics.json").write_text(json.dumps(report))


def test_postprocess_crossfit_scores_each_fold_with_the_other_folds_choice(tmp_path):
    with_blob = 72 / 97  # 36 tumour pixels found, 25 false ones
    finished_cv_run(tmp_path / "row", [[oof_patient("a", True), oof_patient("b", True)],
                                       [oof_patient("c", False), oof_patient("d", False)]])
    finished_cv_run(tmp_path / "clean", [[oof_patient("a", False), oof_patient("b", False)],
                                         [oof_patient("c", False), oof_patient("d", False)]])
    both = postprocess_crossfit.main([str(tmp_path / "row"), str(tmp_path / "clean"), "--reference", "clean"])
    assert both["clean"]["cross_fitted"]["vs_reference"]["mean"] == pytest.approx(0.0)
    assert both["row"]["cross_fitted"]["vs_reference"]["mean"] == pytest.approx((with_blob - 1) / 2)
    assert both["row"]["cross_fitted"]["vs_reference"]["worse"] == 2
    result = both["row"]
    assert result["default"]["patient_dice_mean"]["mean"] == pytest.approx((with_blob + 1) / 2)
    assert result["chosen_on_all_folds"]["patient_dice_mean"]["mean"] == pytest.approx(1.0)
    assert result["chosen_on_all_folds"]["vs_default"]["better"] == 2
    # The clean fold's choice keeps the blobs of the other; the blobs' fold's choice is harmless on the clean one.
    assert "largest 3-D component" not in result["cross_fitted"]["postprocess_by_fold"][0]
    assert "largest 3-D component" in result["cross_fitted"]["postprocess_by_fold"][1]
    assert result["cross_fitted"]["per_patient_dice"] == pytest.approx({"a": with_blob, "b": with_blob, "c": 1, "d": 1})
    assert result["cross_fitted"]["vs_default"]["mean"] == pytest.approx(0.0)


@pytest.mark.parametrize("folds, message", [(None, "cv_metrics.json not found"),
                                            (1, "1 fold.* cross-fitting needs at least 2")])
def test_postprocess_crossfit_names_a_run_it_cannot_cross_fit(tmp_path, folds, message):
    if folds:  # a finished run, then one fold's out-of-fold file lost
        finished_cv_run(tmp_path / "row", [[oof_patient("a", True)], [oof_patient("b", False)]])
        (tmp_path / "row" / "logs" / "fold_1" / "oof_probabilities.npz").unlink()
    with pytest.raises(SystemExit, match=message):
        postprocess_crossfit.main([str(tmp_path / "row")])


def test_postprocess_crossfit_names_a_reference_that_is_not_a_run(tmp_path):
    finished_cv_run(tmp_path / "row", [[oof_patient("a", True)], [oof_patient("b", False)]])
    with pytest.raises(SystemExit, match="--reference 'baseline' is not one of the runs \\(row\\)"):
        postprocess_crossfit.main([str(tmp_path / "row"), "--reference", "baseline"])


def test_recipe_budget_times_a_candidate_and_reruns_only_changed_sides(tmp_path, monkeypatch):
    trained = []

    def fake_train(name, data_dir, split, seed, output_dir, flags, log):
        trained.append(name)
        output_dir.mkdir()
        return 0

    def fake_prepare(args, out):
        (out / "split.json").write_text(json.dumps({"train": ["a", "b"], "val": ["c"], "test": ["d"]}))
        return out / "split.json"

    seconds = {"original": 100.0, "fast": 80.0, "candidate": 90.0}
    clock = []
    monkeypatch.setattr(recipe_budget, "train_lgg", fake_train)
    monkeypatch.setattr(recipe_budget, "prepare", fake_prepare)
    # Each side's clock reads 0 before it trains and its seconds after.
    monkeypatch.setattr(recipe_budget.time, "perf_counter", lambda: clock.append(0) or (
        seconds[trained[-1]] if len(clock) % 2 == 0 else 0.0))
    args = ["--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]
    result = recipe_budget.main(args + ["--candidate", "--recipe fast --epochs 26"])
    assert trained == ["original", "fast", "candidate"]
    assert result["ratio_fast_to_original"] == 0.8 and result["within_budget"]
    assert result["ratio_candidate_to_original"] == 0.9 and result["candidate_within_budget"]
    assert result["patients"] == 4
    trained.clear()
    assert recipe_budget.main(args)["ratio_candidate_to_original"] == 0.9  # kept, like every finished side
    assert trained == []
    recipe_budget.main(args + ["--candidate", "--recipe fast --epochs 24"])
    assert trained == ["candidate"]  # new flags: only that side reruns
