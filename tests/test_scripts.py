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

# The --base of every batch in docs/performance.md.
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


def finished_row(out: Path, name: str, dice: dict[str, float]) -> None:
    """A row folder as `tfunet-train --folds` leaves it, reduced to what ablate.py reads."""
    table = {"mean": {key: 0.5 for key in ablate.FIGURES}, "sd": {key: 0.1 for key in ablate.FIGURES},
             "per_patient_dice": dice}
    logs = out / name / "logs"
    logs.mkdir(parents=True)
    (logs / "cv_metrics.json").write_text(json.dumps({
        "wall_seconds": 60.0, "patients": len(dice), "default": table, "chosen": table,
        "postprocess": {"chosen": {"describe": "threshold 0.5"}}}))


def test_ablate_no_train_reports_finished_rows_and_touches_nothing(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("--no-train started a training run")

    monkeypatch.setattr(ablate, "train_lgg", no_training)
    (tmp_path / "folds.json").write_text("{}")
    finished_row(tmp_path, "baseline", {"a": 0.5, "b": 0.6})
    finished_row(tmp_path, "foreground_third", {"a": 0.7, "b": 0.5})
    result = ablate.main(["--data-dir", str(tmp_path), "--out", str(tmp_path), "--no-train",
                          "--rows", "baseline", "foreground_third", "no_augment"])
    assert result["rows"]["no_augment"]["error"] == "not finished"
    assert result["rows"]["foreground_third"]["vs_reference_patient_dice"]["mean"] == pytest.approx(0.05)
    assert not (tmp_path / "ablation.json").exists()


def test_ablate_no_train_on_an_empty_folder_says_so(tmp_path):
    with pytest.raises(SystemExit, match="nothing has run"):
        ablate.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "none"), "--no-train"])
    assert not (tmp_path / "none").exists()
