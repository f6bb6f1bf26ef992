"""Benchmark the LGG data path and print JSON: TFDS shard preparation (slices/s, goal >= 33 on two
cores) on the shared sample, and tf.data throughput of the training pipeline with and without
augmentation (images/s).

    python scripts/bench_data.py                 # the whole shared sample (24 patients)
    python scripts/bench_data.py --quick         # 4 patients, a few batches: a smoke test

Shards go to a temporary folder, prepared from scratch each run. The TIFFs may already be in
the page cache, so a first read from a cold disk can be slower.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from tfunet.runtime import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow starts, as every tfunet command does

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "lgg" / "kaggle_3m"
GOAL_SLICES_PER_S = 33.0


def throughput(dataset, batches: int, fill: bool = False) -> tuple[float, float]:
    """(images/s, CPU ms per image of all threads) over `batches` batches, after the first
    (tracing, buffers) or, with fill, after a whole first epoch (a cached pipeline reads from
    memory only from its second epoch). CPU time is what the pipeline takes from training on
    shared cores."""
    if fill:
        for _ in dataset:
            pass
    iterator = iter(dataset.repeat())
    next(iterator)  # the first batch pays for tracing and filling buffers
    start, cpu, images = time.perf_counter(), time.process_time(), 0
    for _ in range(batches):
        images += int(next(iterator)[0].shape[0])
    return images / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / images


def augment_batched(dataset, seed: int):
    """The basic augmentation set applied per batch instead of per slice (one draw of every
    parameter per slice, from one seed per batch; one gather and one warp per batch): the lever
    "augment a whole batch at once", measured here against the per-slice `augment` and not
    adopted (see docs/performance.md)."""
    import math

    import tensorflow as tf

    from tfunet.data.augment import AugmentParams

    p = AugmentParams()

    def batch_augment(batch, pair):
        image = batch["image"]
        u = tf.random.stateless_uniform([tf.shape(image)[0], 6], pair)
        flip = tf.where(u[:, 0] < p.flip_prob, -1.0, 1.0)
        angle = (2.0 * u[:, 1] - 1.0) * math.radians(p.max_rotation_deg)
        scale = 1.0 - p.max_scale + 2.0 * p.max_scale * u[:, 2]
        cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
        m00, m01, m10, m11 = flip * cos, sin, -flip * sin, cos
        cx = (tf.cast(tf.shape(image)[2], tf.float32) - 1.0) / 2.0
        cy = (tf.cast(tf.shape(image)[1], tf.float32) - 1.0) / 2.0
        zero = tf.zeros_like(m00)
        transforms = tf.stack([m00, m01, cx - m00 * cx - m01 * cy, m10, m11, cy - m10 * cx - m11 * cy,
                               zero, zero], axis=1)
        mean = (tf.reduce_mean(tf.cast(image, tf.float32), axis=[1, 2, 3]) / 255.0)[:, None]
        shift = ((2.0 * u[:, 3] - 1.0) * p.brightness)[:, None]
        factor = (1.0 - p.contrast + 2.0 * p.contrast * u[:, 4])[:, None]
        gamma = tf.exp((2.0 * u[:, 5] - 1.0) * math.log1p(p.gamma))[:, None]
        levels = tf.clip_by_value((tf.linspace(0.0, 1.0, 256)[None] - mean) * factor + mean + shift, 0.0, 1.0)
        table = tf.cast(tf.round(tf.pow(levels, gamma) * 255.0), tf.uint8)
        image = tf.gather(table, tf.cast(image, tf.int32), batch_dims=1)

        def warp(x, interpolation):
            return tf.raw_ops.ImageProjectiveTransformV3(
                images=tf.cast(x, tf.float32), transforms=transforms, output_shape=tf.shape(x)[1:3],
                fill_value=0.0, interpolation=interpolation, fill_mode="CONSTANT")

        return {**batch, "image": tf.cast(tf.clip_by_value(tf.round(warp(image, "BILINEAR")), 0.0, 255.0), tf.uint8),
                "mask": tf.cast(warp(batch["mask"], "NEAREST") > 0.5, tf.uint8)}

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((dataset, seeds)).map(batch_augment, num_parallel_calls=tf.data.AUTOTUNE,
                                                     deterministic=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="kaggle_3m folder, parent or zip")
    parser.add_argument("--quick", action="store_true", help="4 patients and 5 batches")
    parser.add_argument("--batches", type=int, default=50, help="timed batches per pipeline")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    import tfunet.data.lgg_tfds  # noqa: F401  (imported here: import time is not preparation time)
    from tfunet.data.augment import augment
    from tfunet.data.lgg import locate
    from tfunet.data.lgg_tfds import LGGSource
    from tfunet.data.pipeline import make_pipeline, to_inputs_targets

    with tempfile.TemporaryDirectory(prefix="tfunet-bench-") as tmp:
        data = Path(args.data_dir)
        batches = args.batches
        if args.quick:
            root = locate(data).path
            subset = Path(tmp) / "kaggle_3m"
            for patient in sorted(p for p in root.iterdir() if p.is_dir())[:4]:
                shutil.copytree(patient, subset / patient.name)
            data, batches = subset, 5
        start = time.perf_counter()
        source = LGGSource(data, Path(tmp) / "cache")
        prepare_s = time.perf_counter() - start
        start = time.perf_counter()
        LGGSource(data, Path(tmp) / "cache")
        reuse_s = time.perf_counter() - start

        slices = sum(source.patients().values())
        pipeline, cpu_ms = {}, {}
        # The training pipeline as tfunet-train runs it (basic or nnU-Net augmentation, or none),
        # with resized slices cached in memory (the lever of decoding once), and the cached
        # pipeline with the basic set applied per batch (the lever of augmenting a batch at once).
        variants = {"augment": ("basic", False), "augment_nnunet": ("nnunet", False),
                    "no_augment": (None, False), "augment_cached": ("basic", True),
                    "no_augment_cached": (None, True), "augment_batched_cached": ("batched", True)}
        for name, (preset, cache) in variants.items():
            batched = preset == "batched"
            ds = make_pipeline(source.dataset(sorted(source.patients())), image_size=args.image_size,
                               batch_size=args.batch_size, training=True, seed=0, cache=cache,
                               augment=functools.partial(augment, params=preset) if preset and not batched else None,
                               with_metadata=batched)
            if batched:
                ds = augment_batched(ds, seed=0).map(to_inputs_targets)
            pipeline[name], cpu_ms[name] = (round(v, 2) for v in throughput(ds, batches, fill=cache))

    result = {
        "data": str(args.data_dir), "quick": args.quick, "patients": len(source.patients()),
        "slices": slices, "cpus": len(os.sched_getaffinity(0)), "machine": platform.processor() or
        platform.machine(), "prepare_seconds": round(prepare_s, 2),
        "prepare_slices_per_s": round(slices / prepare_s, 1), "goal_slices_per_s": GOAL_SLICES_PER_S,
        "meets_goal": slices / prepare_s >= GOAL_SLICES_PER_S, "reuse_seconds": round(reuse_s, 2),
        "image_size": args.image_size, "batch_size": args.batch_size, "timed_batches": batches,
        "pipeline_images_per_s": pipeline, "pipeline_cpu_ms_per_image": cpu_ms,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
