import math

import keras
import numpy as np
import pytest

from tfunet.config import make_config
from tfunet.metadata import read_metadata
from tfunet.errors import TfunetError
from tfunet.precision import AUTO_ENV, cpu_flags, dtype_policy, resolve_policy
from tfunet.train import train

ZEN2 = frozenset({"fma", "avx2", "sse4_2"})  # this machine and CI: no bfloat16 instructions
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})


@pytest.mark.parametrize("choice, gpus, flags, expected", [
    ("auto", [], ZEN2, "float32"),
    ("auto", [], SAPPHIRE_RAPIDS, "mixed_bfloat16"),
    ("auto", [], frozenset({"avx512_bf16"}), "mixed_bfloat16"),
    ("auto", [], frozenset({"amx_bf16"}), "mixed_bfloat16"),
    ("auto", [], frozenset(), "float32"),  # no /proc/cpuinfo (macOS, Windows)
    ("auto", [(8, 0)], ZEN2, "mixed_float16"),  # A100: tensor cores
    ("auto", [(9, 0), (9, 0)], ZEN2, "mixed_float16"),
    ("auto", [(6, 1)], SAPPHIRE_RAPIDS, "float32"),  # Pascal: float16 brings no speed-up
    ("auto", [(8, 0), None], ZEN2, "float32"),  # a GPU of unknown capability
    ("off", [(8, 0)], SAPPHIRE_RAPIDS, "float32"),
    ("bfloat16", [], ZEN2, "mixed_bfloat16"),  # an explicit choice is obeyed
    ("float16", [], ZEN2, "mixed_float16"),
])
def test_policy_resolution(choice, gpus, flags, expected):
    assert resolve_policy(choice, gpus=gpus, flags=flags) == expected


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_auto_resolves_to_float32_on_this_machine_without_bfloat16_instructions(monkeypatch):
    monkeypatch.delenv(AUTO_ENV, raising=False)
    if (cpu_flags() & {"avx512_bf16", "amx_bf16"}) or resolve_policy("auto", flags=frozenset()) != "float32":
        pytest.skip("this machine has bfloat16 instructions or a GPU")
    assert resolve_policy("auto") == "float32"


@pytest.mark.parametrize("value, choice, expected", [
    ("off", "auto", "float32"),
    ("bfloat16", "auto", "mixed_bfloat16"),
    ("float16", "auto", "mixed_float16"),
    ("", "auto", None),  # empty: as if unset
    ("bfloat16", "off", "float32"),  # an explicit choice wins
    ("off", "float16", "mixed_float16"),
])
def test_auto_precision_environment_variable(monkeypatch, value, choice, expected):
    monkeypatch.setenv(AUTO_ENV, value)
    probed = resolve_policy(choice)
    monkeypatch.delenv(AUTO_ENV)
    assert probed == (expected or resolve_policy(choice))


def test_auto_precision_environment_variable_is_ignored_with_explicit_hardware(monkeypatch):
    monkeypatch.setenv(AUTO_ENV, "bfloat16")
    assert resolve_policy("auto", gpus=[], flags=ZEN2) == "float32"
    monkeypatch.setenv(AUTO_ENV, "off")
    assert resolve_policy("auto", gpus=[], flags=SAPPHIRE_RAPIDS) == "mixed_bfloat16"


def test_invalid_auto_precision_environment_variable(monkeypatch, capsys):
    from tfunet.cli.train import main

    monkeypatch.setenv(AUTO_ENV, "fp8")
    with pytest.raises(TfunetError, match=f"^{AUTO_ENV}='fp8' is not one of off, bfloat16, float16$"):
        resolve_policy("auto")
    assert main(["--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"tfunet-train: error: {AUTO_ENV}='fp8' is not one of off, bfloat16, float16\n"
    assert main(["--epochs", "1", "--mixed-precision", "off", "--image-size", "30"]) == 2  # checked, but
    assert "fp8" not in capsys.readouterr().err  # an explicit choice does not read the variable


def test_dtype_policy_is_restored_afterwards():
    before = keras.mixed_precision.global_policy().name
    with dtype_policy("mixed_bfloat16"):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == before


@pytest.mark.parametrize("precision, policy", [("bfloat16", "mixed_bfloat16"), ("float16", "mixed_float16")])
def test_mixed_precision_fit_stays_finite(tmp_path, precision, policy, recwarn):
    config = make_config(dict(image_size=32, base_filters=4, depth=2, num_patients=4, slices_per_patient=4,
                              epochs=1, batch_size=8, lr=1e-2, mixed_precision=precision,
                              output_dir=str(tmp_path)))
    results = train(config, verbose=0)
    log = (tmp_path / "logs" / "train_log.csv").read_text().splitlines()
    header = log[0].split(",")
    for row in log[1:]:
        values = dict(zip(header, map(float, row.split(","))))
        assert math.isfinite(values["loss"]) and math.isfinite(values["val_loss"]), row
    assert all(math.isfinite(v) for v in results["val"].values())
    assert not [w for w in recwarn if "Skipping variable loading" in str(w.message)]

    best = keras.saving.load_model(tmp_path / "saved_models" / "best_model.keras")
    assert best.get_layer("enc0_conv1").dtype_policy.name == policy
    assert best.get_layer("enc0_conv1").compute_dtype == policy.removeprefix("mixed_")
    assert best.output.dtype == "float32"  # logits, loss and metrics stay float32
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in best.weights)
    meta = read_metadata(tmp_path / "saved_models" / "best_model.keras")
    assert meta["config"]["mixed_precision"] == precision and meta["policy"] == policy
    assert keras.mixed_precision.global_policy().name == "float32"  # nothing leaks into later models
