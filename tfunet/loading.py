"""Loading a saved `.keras` model, and the one float32 rebuild behind every export and serving path.

A model trained under a mixed-precision policy computes in bfloat16 or float16. Exports and
serving never do: TFLite cannot convert a bfloat16 graph, and a served mask should not depend
on the trainer's hardware. `float32_model` is the single place where that rebuild happens.
"""

from __future__ import annotations

from pathlib import Path

import keras

from tfunet.errors import TfunetError
from tfunet.metadata import read_metadata

FLOAT32 = "float32"


def register_custom_objects() -> None:
    """Register tfunet's custom Keras objects (the loss, the metrics), so `.keras` files that
    hold them load. Importing their modules does it; `import tfunet` alone does not."""
    import tfunet.losses  # noqa: F401
    import tfunet.metrics  # noqa: F401


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


def is_mixed_precision(model: keras.Model) -> bool:
    return any(layer.dtype_policy.compute_dtype != FLOAT32 for layer in model.layers)


def _float32_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    config = layer.get_config()
    config["dtype"] = FLOAT32
    return layer.__class__.from_config(config)


def float32_model(model: keras.Model) -> keras.Model:
    """The model itself if it computes in float32, else a float32 twin with its weights.

    The twin is cloned from the model's own layer configs with every dtype policy set to
    float32, so it needs no metadata and works for any functional model. Variables are float32
    under every policy, so copying them loses nothing.
    """
    if not is_mixed_precision(model):
        return model
    clone = keras.models.clone_model(model, clone_function=_float32_layer)
    clone.set_weights(model.get_weights())
    return clone


def rebuild_in_policy(model: keras.Model, meta: dict, policy: str) -> keras.Model:
    """The same U-Net (built by `build_unet` from the metadata's config) and weights, with its
    layers computing in the Keras dtype policy `policy` and its logits in float32.

    Used to score a float32-trained model in bfloat16; unlike the float32 rebuild it needs the
    metadata, because the layers that must stay float32 are known only to `build_unet`."""
    if policy == FLOAT32:
        return float32_model(model)
    from tfunet.config import FIELDS, make_config
    from tfunet.model import build_from_config
    from tfunet.precision import dtype_policy

    saved = {k: v for k, v in (meta.get("config") or {}).items() if k in FIELDS}
    saved["image_size"] = int(meta["image_size"])
    with dtype_policy(policy):
        clone = build_from_config(make_config(saved, validate=False))
    try:
        clone.set_weights(model.get_weights())
    except ValueError as exc:
        raise TfunetError(f"the model's metadata config does not describe the model: "
                          f"{str(exc).splitlines()[0]}") from None
    return clone
