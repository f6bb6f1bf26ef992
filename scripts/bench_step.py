"""What one training step costs, and what each step-level lever changes: the U-Net compiled as
tfunet-train compiles it, against variants with the same weights, on one real LGG batch; print JSON.

    python scripts/bench_step.py --data-dir ../shared/lgg/kaggle_3m
    python scripts/bench_step.py --base-filters 32 --mixed-precision off

The variants:
  * default: tfunet-train's model with `--fused-batch-norm` and the five training metrics (it
    was tfunet-train's default when the committed results ran; the name is kept so they compare);
  * no_training_metrics: the same model compiled with metrics=[] (tfunet-train computes
    per-slice and pooled Dice, Jaccard, precision and recall on every step: the CSV's training
    columns and the plot's train Dice);
  * keras_batch_norm: Keras's BatchNormalization instead of tfunet's fused one (tfunet-train's
    default).
The models train in alternating rounds of `--steps` steps, so whatever else shares the cores
slows all alike; each step is timed (end to end of a batch, by a callback) and the figures are
medians over all steps. The metric updates alone, in one compiled function, are timed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import DEFAULT_DATA  # noqa: E402
from benchmark import machine  # noqa: E402

from tfunet.runtime import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow starts, as every tfunet command does

def real_batch(data_dir: Path, image_size: int, batch_size: int):
    """One training batch of real slices (augmented as in training), with tumour in it."""
    from tfunet.data.augment import augment
    from tfunet.data.lgg_tfds import LGGSource
    from tfunet.data.pipeline import make_pipeline

    with tempfile.TemporaryDirectory(prefix="tfunet-bench-") as tmp:
        source = LGGSource(data_dir, tmp)
        ds = make_pipeline(source.dataset(sorted(source.patients())[:4]), image_size=image_size,
                           batch_size=batch_size, training=True, seed=0, augment=augment)
        for images, masks in ds:
            if float(masks.numpy().sum()) > 0:
                return images.numpy(), masks.numpy()
    raise SystemExit(f"bench_step: no batch with tumour in the first 4 patients of {data_dir}")


def build_variants(config, steps: int) -> dict:
    """The compiled models, all starting from the default model's weights."""
    from dataclasses import replace

    from tfunet.model import build_from_config
    from tfunet.train import compile_model, make_loss, make_optimizer

    config = replace(config, fused_batch_norm=True)
    default = compile_model(build_from_config(config), config, steps_per_epoch=steps)
    bare = build_from_config(config)
    bare.compile(optimizer=make_optimizer(config, steps), loss=make_loss(config), metrics=[])
    keras_bn = compile_model(build_from_config(replace(config, fused_batch_norm=False)), config, steps)
    for model in (bare, keras_bn):
        model.set_weights(default.get_weights())
    return {"default": default, "no_training_metrics": bare, "keras_batch_norm": keras_bn}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(DEFAULT_DATA), help="a folder of LGG patients (kaggle_3m)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument("--mixed-precision", default="auto", help="as tfunet-train's flag")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per variant")
    p.add_argument("--steps", type=int, default=8, help="training steps per round")
    args = p.parse_args(argv)
    at_start = machine()

    import keras
    import tensorflow as tf

    from tfunet.config import make_config
    from tfunet.metrics import training_metrics
    from tfunet.precision import dtype_policy, resolve_policy

    config = make_config(dict(dataset="lgg", data_dir=args.data_dir, image_size=args.image_size,
                              batch_size=args.batch_size, base_filters=args.base_filters,
                              mixed_precision=args.mixed_precision))
    images, masks = real_batch(Path(args.data_dir), args.image_size, args.batch_size)
    ds = tf.data.Dataset.from_tensors((images, masks)).repeat()
    policy = resolve_policy(config.mixed_precision)
    keras.utils.set_random_seed(0)
    with dtype_policy(policy):
        models = build_variants(config, args.steps)

    class StepTimer(keras.callbacks.Callback):
        """Seconds between consecutive batch ends: whole steps, including the metric updates."""

        def __init__(self, out: list):
            super().__init__()
            self.out, self.last = out, None

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if self.last is not None:
                self.out.append(now - self.last)
            self.last = now

    seconds = {name: [] for name in models}
    for model in models.values():  # warm-up: tracing
        model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
    for _ in range(args.rounds):
        for name, model in models.items():
            model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=[StepTimer(seconds[name])])

    metrics = training_metrics(config.threshold)
    logits = models["default"].predict(images, verbose=0)

    @tf.function
    def update():
        for metric in metrics:
            metric.update_state(masks, logits)

    update()
    start = time.perf_counter()
    for _ in range(20):
        update()
    update_ms = (time.perf_counter() - start) / 20 * 1000

    step_ms = {name: round(1000 * statistics.median(values), 1) for name, values in seconds.items()}
    result = {
        "machine": {**at_start, "load_average_end": machine()["load_average"]}, "policy": policy,
        "data": args.data_dir, "image_size": args.image_size,
        "batch_size": args.batch_size, "base_filters": args.base_filters, "rounds": args.rounds,
        "steps_per_round": args.steps, "median_step_ms": step_ms,
        "images_per_s": {name: round(args.batch_size * 1000 / ms, 2) for name, ms in step_ms.items()},
        "default_speedup_over": {name: round(ms / step_ms["default"], 3) for name, ms in step_ms.items()
                                 if name != "default"},
        "metric_updates_alone_ms": round(update_ms, 1),
        "step_ms": {name: [round(1000 * v) for v in values] for name, values in seconds.items()},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
