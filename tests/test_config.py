import dataclasses
import json

import pytest

from tfunet.config import PRESETS, RECIPES, TrainConfig, make_config
from tfunet.errors import TfunetError


def test_synthetic_preset_is_the_default():
    config = make_config()
    assert config.dataset == "synthetic"
    for key, value in PRESETS["synthetic"].items():
        assert getattr(config, key) == value


def test_lgg_preset_is_the_original_recipe(tmp_path):
    config = make_config({"dataset": "lgg", "data_dir": str(tmp_path)})
    assert (config.image_size, config.base_filters, config.depth) == (256, 32, 4)
    assert (config.batch_size, config.epochs, config.lr, config.weight_decay) == (16, 130, 1e-3, 1e-5)


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "epochs: 3\nbase-filters: 8\nlr: 0.002\n"),
    (".json", json.dumps({"epochs": 3, "base_filters": 8, "lr": 0.002})),
])
def test_config_file_then_flags_win(tmp_path, suffix, text):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    config = make_config({"epochs": 5, "depth": None}, config_file=path)
    assert config.epochs == 5  # flag wins
    assert config.base_filters == 8 and config.lr == 0.002  # file beats preset
    assert config.depth == PRESETS["synthetic"]["depth"]  # None means "not given"


def test_int_in_file_is_accepted_for_float_option(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1\n")
    assert make_config(config_file=path).lr == 1.0


@pytest.mark.parametrize("overrides, message", [
    ({"image_size": 100}, "not divisible by 2\\*\\*depth = 16"),
    ({"image_size": 64, "depth": 7}, "not divisible"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"dataset": "brats"}, "unknown dataset 'brats'"),
    ({"dataset": "lgg"}, "--data-dir is required"),
    ({"data_dir": "/no/such/folder"}, "data folder not found: /no/such/folder"),
    ({"dropout": 1.5}, "dropout must be in"),
    ({"threshold": 1.0}, "threshold must be in"),
    ({"mixed_precision": "fp8"}, "mixed-precision must be one of"),
    ({"warmup_epochs": 20, "epochs": 5}, "warmup-epochs"),
    ({"colour": "red"}, "unknown option\\(s\\): colour"),
    ({"epochs": "many"}, "option epochs expects int"),
    ({"folds": 1}, "folds must be 0 \\(no cross-validation\\) or at least 2, got 1"),
    ({"folds": 3, "strategy": "multi-worker"}, "--folds runs its folds one after another on one machine"),
    ({"foreground_share": 0.01}, "foreground-share must be 0 or draw 1 to 16 slices of a batch of 16"),
    ({"foreground_share": 1.5}, "foreground-share must be 0 or draw 1 to 16"),
    ({"steps_per_execution": 0}, "steps-per-execution must be at least 1"),
    ({"validate_every": 0}, "validate-every must be at least 1, got 0"),
    ({"data_threads": -1}, "data-threads must be 0 \\(tf.data's default\\) or more, got -1"),
    ({"coarse_size": 64}, "--coarse-size and --coarse-epochs go together"),
    ({"coarse_size": 64, "coarse_epochs": 8, "epochs": 8}, "coarse-epochs must be between 1 and epochs - 1 \\(7\\)"),
    ({"coarse_size": 60, "coarse_epochs": 2}, "image-size 60 is not divisible by 2\\*\\*depth = 16"),
    ({"fine_lr": 1e-3}, "--fine-lr restarts .* it needs --coarse-size and --coarse-epochs"),
    ({"fine_lr": -1e-3, "coarse_size": 64, "coarse_epochs": 2}, "must be positive, got -0.001"),
    ({"fine_lr": 1e-3, "coarse_size": 64, "coarse_epochs": 2, "warmup_epochs": 2},
     "warmup-epochs \\(2\\) must be less than coarse-epochs \\(2\\)"),
    ({"deep_supervision": True, "depth": 2}, "--deep-supervision needs depth 3 or more"),
    ({"augmentation": "heavy"}, "augmentation must be one of basic, nnunet, got 'heavy'"),
    ({"foreground_sampling": "voxel"}, "foreground-sampling must be one of slice, patient, got 'voxel'"),
    ({"foreground_sampling": "patient"}, "--foreground-sampling patient spreads .* set --foreground-share too"),
    ({"recipe": "slow"}, "unknown recipe 'slow'; choose one of original, fast"),
])
def test_bad_values_are_explained(overrides, message):
    with pytest.raises(TfunetError, match=message):
        make_config(overrides)


@pytest.mark.parametrize("fields, message", [
    ({"dataset": "brats"}, "unknown dataset 'brats'; choose one of synthetic, lgg"),
    ({"recipe": "slow"}, "unknown recipe 'slow'; choose one of original, fast"),
])
def test_names_are_checked_with_and_without_validation(fields, message):
    with pytest.raises(TfunetError, match=message):
        TrainConfig(**fields).validate()  # a config built by hand
    with pytest.raises(TfunetError, match=message):
        make_config(fields, validate=False)  # the names pick the defaults, so they fail early too


@pytest.mark.parametrize("name, text, message", [
    ("missing.yaml", None, "config file not found"),
    ("bad.json", "{not json", "cannot parse config file"),
    ("list.yaml", "- 1\n- 2\n", "must hold a mapping"),
])
def test_bad_config_files_are_explained(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(TfunetError, match=message):
        make_config(config_file=path)


def test_output_folders_follow_output_dir(tmp_path):
    config = TrainConfig(output_dir=str(tmp_path))
    assert config.model_dir == tmp_path / "saved_models"
    assert config.log_dir == tmp_path / "logs"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipes_resolve_to_their_settings_and_flags_still_win(recipe, tmp_path):
    config = make_config({"dataset": "lgg", "data_dir": str(tmp_path), "recipe": recipe})
    expected = {**PRESETS["lgg"], **RECIPES[recipe]}
    assert {name: getattr(config, name) for name in expected} == expected
    assert config.recipe == recipe
    flagged = make_config({"dataset": "lgg", "data_dir": str(tmp_path), "recipe": recipe, "epochs": 3, "seed": 7})
    assert (flagged.epochs, flagged.seed) == (3, 7)


def test_original_recipe_is_the_lgg_default(tmp_path):
    default = make_config({"dataset": "lgg", "data_dir": str(tmp_path)})
    original = make_config({"dataset": "lgg", "data_dir": str(tmp_path), "recipe": "original"})
    assert dataclasses.replace(original, recipe="") == default
