"""Loading a saved `.keras` model, and the one float32 rebuild behind every export and serving path.

A model trained under a mixed-precision policy computes in bfloat16 or float16. Exports and
serving never do: TFLite cannot convert a bfloat16 graph, and a served mask should not depend
on the trainer's hardware. `float32_model` is the single place where that rebuild happens.
"""

from __future__ import annotations

from pathlib import Path

import keras

from tfunet.errors import TfunetError
from tfunet.metadata import metadata_path, read_metadata

FLOAT32 = "float32"


def register_custom_objects() -> None:
    """Register tfunet's custom Keras objects (the U-Net, the loss, the metrics), so `.keras`
    files that hold them load. Importing their modules does it; `import tfunet` alone does not."""
    import tfunet.losses  # noqa: F401
    import tfunet.metrics  # noqa: F401
    import tfunet.model  # noqa: F401


def _keras_file(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".keras":
        raise TfunetError(f"--model must be a .keras file, got {path}")
    if not path.is_file():
        raise TfunetError(f"model not found: {path}")
    return path


def load_model(path: str | Path, compile: bool = True) -> keras.Model:
    """`keras.saving.load_model` for a tfunet `.keras` file, custom objects registered."""
    path = _keras_file(path)
    register_custom_objects()
    try:
        return keras.saving.load_model(path, compile=compile)
    except Exception as exc:
        raise TfunetError(f"cannot load model {path}: {str(exc).splitlines()[0]}") from None


def load_keras_model(path: str | Path) -> tuple[keras.Model, dict]:
    """A .keras model (uncompiled) and its metadata; clear errors for a missing or unreadable
    file or metadata."""
    meta = read_metadata(_keras_file(path))  # a missing metadata file is reported before a slow load
    return load_model(path, compile=False), meta


def load_keras_models(model) -> tuple[list[keras.Model], dict]:
    """One .keras model, or the members of an ensemble (see `find_members`), and the metadata."""
    members = find_members(model)
    if members is None:
        single, meta = load_keras_model(model if isinstance(model, (str, Path)) else model[0])
        return [single], meta
    meta = ensemble_metadata(model, members)
    return [load_model(m, compile=False) for m in members], meta


# --- ensembles -------------------------------------------------------------------------------------

def _fold_number(path: Path) -> int:
    try:
        return int(path.parent.name.split("_", 1)[1])
    except (IndexError, ValueError):
        return 1 << 30


def find_members(model) -> list[Path] | None:
    """The .keras members of an ensemble named by `model`, or None for a single model.

    `model` is one path or several. An ensemble is several .keras files, or a K-fold run's
    saved_models/ folder (its fold_*/best_model.keras, or the members its tfunet.json lists).
    A folder with saved_model.pb is a SavedModel: one model, even if it serves an ensemble."""
    paths = [Path(m) for m in ([model] if isinstance(model, (str, Path)) else model)]
    if not paths:
        raise TfunetError("--model needs at least one model")
    if len(paths) > 1:
        for path in paths:
            if path.suffix != ".keras":
                raise TfunetError(f"several --model values make an ensemble of .keras files; {path} is not one")
        return [_keras_file(path) for path in paths]
    folder = paths[0]
    if not folder.is_dir() or (folder / "saved_model.pb").is_file():
        return None
    listed = (read_metadata(folder).get("ensemble") or {}).get("members") if metadata_path(folder).is_file() else None
    members = ([folder / m for m in listed] if listed
               else sorted(folder.glob("fold_*/best_model.keras"), key=_fold_number))
    if not members:
        raise TfunetError(f"{folder} is a folder but not a SavedModel (no saved_model.pb), nor a K-fold "
                          f"run's saved_models/ (no fold_*/best_model.keras)")
    for member in members:
        _keras_file(member)
    return members


def ensemble_metadata(model, members: list[Path]) -> dict:
    """The metadata of an ensemble: a K-fold folder's tfunet.json (written after its
    cross-validation), else the first member's with the members listed. Members must share
    their input size."""
    folder = Path(model) if isinstance(model, (str, Path)) else None
    metas = [read_metadata(m) for m in members]
    sizes = {int(m["image_size"]) for m in metas}
    if len(sizes) > 1:
        raise TfunetError(f"ensemble members have different input sizes ({', '.join(map(str, sorted(sizes)))}); "
                          f"they cannot be averaged slice by slice")
    if folder is not None and metadata_path(folder).is_file():
        meta = read_metadata(folder)
    else:
        meta = {**metas[0], "ensemble": {"members": [str(m.resolve()) for m in members]}}
        meta.pop("best", None)
        meta.pop("fold", None)
    return meta


def model_metadata(model) -> dict:
    """The metadata of any `--model`: one saved model's, or an ensemble's (`ensemble_metadata`)."""
    members = find_members(model)
    if members is not None:
        return ensemble_metadata(model, members)
    path = Path(model if isinstance(model, (str, Path)) else model[0])
    if not path.exists():
        raise TfunetError(f"model not found: {path}")
    return read_metadata(path)


def is_mixed_precision(model: keras.Model) -> bool:
    return any(layer.dtype_policy.compute_dtype != FLOAT32 for layer in model.layers)


def rebuild_in_policy(model: keras.Model, policy: str) -> keras.Model:
    """The same model and weights with its layers computing in the Keras dtype policy `policy`
    (its output layers stay as they are unless `policy` is float32, so logits stay float32).

    A `tfunet.model.UNet` is rebuilt from its config; a plain functional model (a `.keras`
    file from tfunet 0.x) is cloned layer by layer with the new policy in each layer's config.
    Variables are float32 under every policy, so copying them loses nothing."""
    from tfunet.model import UNet

    if isinstance(model, UNet):
        clone = UNet.from_config({**model.get_config(), "policy": policy})
    else:
        outputs = {id(t._keras_history.operation) for t in model.outputs}

        def in_policy(layer):
            config = layer.get_config()
            if policy == FLOAT32 or id(layer) not in outputs:
                config["dtype"] = policy
            return layer.__class__.from_config(config)

        clone = keras.models.clone_model(model, clone_function=in_policy)
    clone.set_weights(model.get_weights())
    return clone


def float32_model(model: keras.Model) -> keras.Model:
    """The model itself if it computes in float32, else its float32 twin with its weights.

    The one float32 rebuild: every export and serving path calls it, so a model trained in
    bfloat16 or float16 is safe to hand to any of them."""
    return rebuild_in_policy(model, FLOAT32) if is_mixed_precision(model) else model
