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


def images_per_second(dataset, batches: int, fill: bool = False) -> float:
    """Images/s over `batches` batches, after the first (tracing, buffers) or, with fill, after a
    whole first epoch (a cached pipeline reads from memory only from its second epoch)."""
    if fill:
        for _ in dataset:
            pass
    iterator = iter(dataset.repeat())
    next(iterator)  # the first batch pays for tracing and filling buffers
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        images += int(next(iterator)[0].shape[0])
    return images / (time.perf_counter() - start)


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
    from tfunet.data.pipeline import make_pipeline

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
        pipeline = {}
        # The training pipeline as tfunet-train runs it (basic or nnU-Net augmentation, or none),
        # and with resized slices cached in memory: the lever of decoding once.
        variants = {"augment": ("basic", False), "augment_nnunet": ("nnunet", False),
                    "no_augment": (None, False), "augment_cached": ("basic", True)}
        for name, (preset, cache) in variants.items():
            fn = functools.partial(augment, params=preset) if preset else None
            ds = make_pipeline(source.dataset(sorted(source.patients())), image_size=args.image_size,
                               batch_size=args.batch_size, training=True, seed=0, augment=fn, cache=cache)
            pipeline[name] = round(images_per_second(ds, batches, fill=cache), 1)

    result = {
        "data": str(args.data_dir), "quick": args.quick, "patients": len(source.patients()),
        "slices": slices, "cpus": len(os.sched_getaffinity(0)), "machine": platform.processor() or
        platform.machine(), "prepare_seconds": round(prepare_s, 2),
        "prepare_slices_per_s": round(slices / prepare_s, 1), "goal_slices_per_s": GOAL_SLICES_PER_S,
        "meets_goal": slices / prepare_s >= GOAL_SLICES_PER_S, "reuse_seconds": round(reuse_s, 2),
        "image_size": args.image_size, "batch_size": args.batch_size, "timed_batches": batches,
        "pipeline_images_per_s": pipeline,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
