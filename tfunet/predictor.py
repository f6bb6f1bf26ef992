"""One predictor behind every inference path: evaluation, `tfunet-predict`, the benchmarks.

`load_predictor(path)` takes a `.keras` file, a serving SavedModel folder or a `.tflite` file
and returns a `Predictor` (nnU-Net's `nnUNetPredictor` is the model):

    predictor(images)          uint8 N x H x W x 3, any H and W -> float32 probabilities
                               N x H x W x 1, through the serving computation (resize, model,
                               flip TTA if the metadata says so, resize back; `tfunet.serving`)
    predictor.predict(images)  {"probabilities", "mask"}: the metadata's per-slice mask too
    predictor.raw(images)      uint8 at the model size -> the model's own probabilities,
                               without TTA unless the file has it built in (an export). This
                               is what evaluation and tuning use: they apply TTA and
                               post-processing themselves, from `tfunet.postprocess`.

A `.keras` model runs in float32 (its float32 rebuild) unless another policy is asked for; it
can be compiled with XLA, and with `batch_size` every `raw` call is padded to a multiple of
it so XLA compiles once per multiple, not per batch length. An exported model's precision and
TTA were fixed at export. The predictor holds a list of model-size functions whose
probabilities it averages, so an ensemble of models fits behind the same calls.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from tfunet.errors import TfunetError

Forward = Callable[[np.ndarray], np.ndarray]


class ModelRunner(Protocol):
    """What evaluation needs of a model; `Predictor` implements it, and so can a test fake."""

    path: Path
    meta: dict
    policy: str  # the dtype policy the model computes in
    builtin_tta: bool | None  # an export's fixed flip TTA; None: evaluation chooses

    @property
    def image_size(self) -> int: ...

    def raw(self, images: np.ndarray) -> np.ndarray: ...


class Predictor:
    """A model in any saved form (or several averaged) behind one call; see the module docstring."""

    def __init__(self, path: Path, meta: dict, kind: str, forwards: Sequence[Forward], *,
                 serve: Callable[[np.ndarray], dict] | None = None, policy: str = "float32",
                 builtin_tta: bool | None = None, keras_model=None):
        self.path, self.meta, self.kind = Path(path), meta, kind
        self.forwards = list(forwards)
        self.policy, self.builtin_tta = policy, builtin_tta
        self.keras_model = keras_model  # for the architecture figure, when there is one
        self._serve = serve

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @staticmethod
    def _check(images) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise TfunetError(f"a predictor takes a uint8 batch N x H x W x 3 of raw pixels, "
                              f"got {images.dtype} {images.shape}")
        return images

    def raw(self, images) -> np.ndarray:
        """float32 probabilities at the model size, averaged over the members."""
        images = self._check(images)
        probs = [np.asarray(forward(images), np.float32) for forward in self.forwards]
        return probs[0] if len(probs) == 1 else np.mean(probs, axis=0)

    def predict(self, images) -> dict[str, np.ndarray]:
        """{"probabilities": float32 N x H x W x 1, "mask": uint8 0/1 N x H x W x 1}."""
        images = self._check(images)
        out = self._serve(images) if self._serve is not None else serve_eagerly(self.raw, self.meta, images)
        return {key: np.asarray(value) for key, value in out.items()}

    def __call__(self, images) -> np.ndarray:
        """float32 probabilities N x H x W x 1 at the images' own size."""
        return self.predict(images)["probabilities"].astype(np.float32)


def serve_eagerly(forward: Forward, meta: dict, images: np.ndarray) -> dict:
    """The serving computation (`tfunet.serving.serving_outputs`) run eagerly around a model-size
    function without TTA of its own: for models that are not TensorFlow graphs (TFLite)."""
    import tensorflow as tf

    from tfunet.postprocess import Settings
    from tfunet.serving import serving_outputs

    def probability_at_model_size(x):
        return tf.constant(forward(np.asarray(x).astype(np.uint8)))

    return serving_outputs(tf.constant(images), probability_at_model_size, Settings.from_metadata(meta),
                           int(meta["image_size"]))


def _keras_predictor(model, mixed_precision: str, jit_compile: bool, batch_size: int | None) -> Predictor:
    """A .keras model, or an ensemble of them (`tfunet.loading.load_keras_models`)."""
    import tensorflow as tf

    from tfunet.loading import float32_model, load_keras_models, rebuild_in_policy
    from tfunet.precision import resolve_policy
    from tfunet.serving import ServingModule

    models, meta = load_keras_models(model)
    policy = resolve_policy(mixed_precision)
    models = [float32_model(m) if policy == "float32" else rebuild_in_policy(m, policy) for m in models]

    def member_forward(member):
        _, height, width, channels = member.input_shape

        @tf.function(jit_compile=jit_compile,
                     input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8)])
        def forward_tf(images):
            return tf.sigmoid(tf.cast(member(tf.cast(images, tf.float32), training=False), tf.float32))

        def forward(images: np.ndarray) -> np.ndarray:
            n = len(images)
            padded = -(-n // batch_size) * batch_size if jit_compile and batch_size else n
            if padded > n:  # a multiple of batch_size: one XLA compilation per multiple used, not per n
                images = np.concatenate([images, np.zeros((padded - n, *images.shape[1:]), images.dtype)])
            return forward_tf(images).numpy()[:n]

        return forward

    serve = None
    if policy == "float32":  # images of any size go through the exported SavedModel's very graph
        graph = ServingModule(models, meta).serve
        serve = lambda images: graph(tf.constant(images))  # noqa: E731
    path = Path(model) if isinstance(model, (str, Path)) else Path(model[0])
    return Predictor(path, meta, "keras", [member_forward(m) for m in models], serve=serve, policy=policy,
                     keras_model=models[0])


def _saved_model_predictor(path: Path) -> Predictor:
    import tensorflow as tf

    from tfunet.metadata import read_metadata

    if not (path / "saved_model.pb").is_file():
        raise TfunetError(f"{path} is a folder but not a SavedModel (no saved_model.pb)")
    meta = read_metadata(path)
    try:
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    except (KeyError, OSError, ValueError) as exc:
        raise TfunetError(f"cannot load SavedModel {path}: {str(exc).splitlines()[0]}") from None
    serve = lambda images: signature(images=tf.constant(images))  # noqa: E731
    return Predictor(path, meta, "saved_model", [lambda images: serve(images)["probabilities"].numpy()],
                     serve=serve, builtin_tta=bool(meta["postprocess"]["tta_flip"]))


def _tflite_predictor(path: Path, num_threads: int | None) -> Predictor:
    from ai_edge_litert.interpreter import Interpreter

    from tfunet.metadata import read_metadata
    from tfunet.postprocess import flip_average

    meta = read_metadata(path)
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads or os.cpu_count())
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise TfunetError(f"cannot load TFLite model {path}: {str(exc).splitlines()[0]}") from None
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def forward(images: np.ndarray) -> np.ndarray:
        # The .tflite has a fixed batch of 1: run the slices one by one.
        probs = []
        for image in np.asarray(images, np.float32):
            interpreter.set_tensor(inp["index"], image[None])
            interpreter.invoke()
            probs.append(interpreter.get_tensor(out["index"]))
        return np.concatenate(probs) if probs else np.zeros((0, *out["shape"][1:]), np.float32)

    # Like a SavedModel, the file's TTA is fixed at export (the metadata's): `raw` applies it, and
    # serving runs the plain model inside the serving computation, which applies it there.
    tta = bool(meta["postprocess"]["tta_flip"])
    raw = (lambda images: flip_average(forward, images)[1]) if tta else forward
    return Predictor(path, meta, "tflite", [raw], serve=lambda images: serve_eagerly(forward, meta, images),
                     builtin_tta=tta)


def load_predictor(path, *, mixed_precision: str = "off", jit_compile: bool = False,
                   batch_size: int | None = None, num_threads: int | None = None) -> Predictor:
    """A `Predictor` for a .keras file, a serving SavedModel folder or a .tflite file, or an
    ensemble: several .keras files, or a K-fold run's saved_models/ folder (its members'
    probabilities are averaged; see `tfunet.loading.find_members`).

    mixed_precision: the policy a .keras model computes in (off = float32, bfloat16, float16,
        auto as in training); an export's was fixed at export, so only "off" is accepted for it.
    jit_compile, batch_size: XLA for a .keras model's forward pass, padded to batch_size.
    num_threads: TFLite interpreter threads (default: all cores).
    """
    from tfunet.loading import find_members

    if not isinstance(path, (str, Path)):
        paths = list(path)
        if len(paths) != 1:
            return _keras_predictor(paths, mixed_precision, jit_compile, batch_size)
        path = paths[0]
    path = Path(path)
    if not path.exists():
        raise TfunetError(f"model not found: {path}")
    if (path.suffix == ".keras" and path.is_file()) or find_members(path):
        return _keras_predictor(path, mixed_precision, jit_compile, batch_size)
    if mixed_precision != "off":
        raise TfunetError(f"--mixed-precision {mixed_precision} needs a .keras model; the precision of "
                          f"{path} was fixed at export")
    if path.is_dir():
        return _saved_model_predictor(path)
    if path.suffix == ".tflite":
        return _tflite_predictor(path, num_threads)
    raise TfunetError(f"--model must be a .keras file, a SavedModel folder or a .tflite file, got {path}")
