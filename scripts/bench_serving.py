"""Benchmark the serving formats and print JSON: latency per slice at batch 1 and throughput at
batch 16 for Keras, the serving SavedModel and TFLite float32/float16/dynamic/int8 (LiteRT with
XNNPACK), file sizes, and the int8 model's Dice beside float32's on the model's test and
validation patients.

    python scripts/bench_serving.py --model saved_models/best_model.keras   # a model trained on lgg
    python scripts/bench_serving.py                    # untrained 256 px base-32 U-Net: speed and sizes only
    python scripts/bench_serving.py --quick            # 64 px base-8 model, few repeats: a smoke test

What is timed, all at the model's size on `--threads` cores (the process is pinned to them):
  keras        `model.predict_on_batch` on float32 raw pixels (logits)
  saved_model  the `serving_default` signature on uint8 pixels (resize, probabilities, mask)
  tflite_*     `Interpreter.invoke` (default delegates, i.e. XNNPACK, num_threads=--threads);
               batch 16 resizes the input tensor to 16 when the model allows it, else 16 calls
Dice: every slice of each `--dice-splits` split (test, val) of the model's own patient split
(its metadata) through float32 and int8 TFLite with the metadata's threshold and per-slice
post-processing, scored by tfunet.metrics; the goal for a model trained on lgg is
|int8 - float32| <= 0.01. `--data-dir` if the data moved.
Run it on a quiet machine: other processes on the same cores lower the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tfunet.runtime import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow starts, as every tfunet command does

DICE_GOAL = 0.01


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help=".keras model with its metadata (default: an untrained U-Net)")
    p.add_argument("--data-dir", help="the model's dataset folder, if it moved since training")
    p.add_argument("--quick", action="store_true", help="small model, 3 repeats, 16 Dice slices")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per format and batch size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calibration-samples", type=int, default=100)
    p.add_argument("--dice-slices", type=int, default=0, help="limit the Dice slices per split (0: all)")
    p.add_argument("--dice-splits", default="test,val",
                   help="the model's own splits to score float32 and int8 on (comma list)")
    p.add_argument("--output", help="also write the JSON here")
    return p.parse_args(argv)


def pin_threads(threads: int) -> int:
    cores = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cores)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(len(cores))
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return len(cores)


def untrained_model(folder: Path, quick: bool) -> Path:
    """A freshly initialised U-Net with metadata: the lgg architecture, or a small one when quick.
    Its dataset is synthetic, so int8 calibration and Dice run without any download."""
    from tfunet.config import make_config
    from tfunet.data.sources import load_splits
    from tfunet.metadata import make_metadata, write_metadata
    from tfunet.model import build_from_config

    if quick:
        size = dict(image_size=64, base_filters=8, depth=3)
    else:
        size = dict(image_size=256, base_filters=32, depth=4)
    config = make_config({**size, "num_patients": 6, "slices_per_patient": 4 if quick else 8,
                          "output_dir": str(folder)})
    path = folder / "untrained.keras"
    build_from_config(config).save(path)
    write_metadata(path, make_metadata(config, load_splits(config).split))
    return path


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(seconds_batch1: float, seconds_batch16: float) -> dict:
    return {"latency_ms_per_slice_batch1": round(1000 * seconds_batch1, 2),
            "throughput_slices_per_s_batch16": round(16 / seconds_batch16, 2)}


def tflite_speed(path: Path, size: int, threads: int, repeats: int) -> dict:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    def make(batch):
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        index = interpreter.get_input_details()[0]["index"]
        if batch != 1:
            interpreter.resize_tensor_input(index, [batch, size, size, 3], strict=False)
        interpreter.allocate_tensors()
        pixels = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3))
        interpreter.set_tensor(index, pixels.astype(np.float32))
        return interpreter

    one = make(1)
    try:
        sixteen, resized = make(16), True
        batch16 = sixteen.invoke
    except (RuntimeError, ValueError):  # a graph with a fixed batch in it: call 16 times instead
        resized = False

        def batch16():
            for _ in range(16):
                one.invoke()
    return {**speed(timed(one.invoke, repeats), timed(batch16, repeats)), "batch16_resized_input": resized}


def file_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def int8_dice(tflite: dict, meta: dict, data_dir: str | None, limit: int, split: str) -> dict:
    """float32 and int8 TFLite scored on one split of the model's own patient split, masks as
    tfunet-predict makes them."""
    import numpy as np

    from tfunet import metrics
    from tfunet.data.pipeline import make_pipeline
    from tfunet.data.sources import config_for_model, splits_for_model
    from tfunet.predict import load_predictor

    config = config_for_model(meta, data_dir=data_dir)
    splits = splits_for_model(config, meta)
    ds = make_pipeline(splits.dataset(split), image_size=int(meta["image_size"]),
                       batch_size=16, with_metadata=True)
    images, truth = [], []
    for batch in ds:
        images.append(batch["image"].numpy())
        truth.append(batch["mask"].numpy())
    images, truth = np.concatenate(images), np.concatenate(truth)
    if limit:
        images, truth = images[:limit], truth[:limit]
    result = {"dataset": config.dataset, "split": split, "patients": len(splits.split[split]),
              "slices": len(images)}
    for quantize in ("none", "int8"):
        masks = load_predictor(tflite[quantize]).predict(images)["mask"]
        scores = metrics.all_scores(masks, truth)
        name = "float32" if quantize == "none" else "int8"
        result[name] = {k: round(scores[k], 4) for k in ("dice", "dice_pooled")}
    for key in ("dice", "dice_pooled"):
        diff = result["int8"][key] - result["float32"][key]
        result[f"int8_minus_float32_{key}"] = round(diff, 4)
    result["goal_abs_diff"] = DICE_GOAL
    result["meets_goal"] = all(abs(result[f"int8_minus_float32_{k}"]) <= DICE_GOAL
                               for k in ("dice", "dice_pooled"))
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    load_average = [round(x, 2) for x in os.getloadavg()]
    repeats = 3 if args.quick else args.repeats
    dice_limit = 16 if args.quick and not args.dice_slices else args.dice_slices
    threads = pin_threads(args.threads)

    import numpy as np
    import tensorflow as tf

    from tfunet.export import QUANTIZATIONS
    from tfunet.export import calibration_images, export_saved_model, export_tflite
    from tfunet.loading import float32_model, is_mixed_precision, load_keras_model

    with tempfile.TemporaryDirectory(prefix="tfunet-bench-serving-") as tmp:
        tmp = Path(tmp)
        model_path = Path(args.model) if args.model else untrained_model(tmp, args.quick)
        model, meta = load_keras_model(model_path)
        rebuilt = is_mixed_precision(model)
        model = float32_model(model)  # once, not once per export
        size = int(meta["image_size"])
        config = meta.get("config") or {}

        start = time.perf_counter()
        serving = export_saved_model(model, meta, tmp / "serving" / "1")
        calibration = calibration_images(meta, 16 if args.quick else args.calibration_samples, args.data_dir)
        tflite = {q: export_tflite(model, meta, tmp / f"model_{q}.tflite", q,
                                   calibration if q == "int8" else None) for q in QUANTIZATIONS}
        export_seconds = time.perf_counter() - start

        rng = np.random.default_rng(0)
        pixels = {b: rng.integers(0, 256, (b, size, size, 3), np.uint8) for b in (1, 16)}
        floats = {b: x.astype(np.float32) for b, x in pixels.items()}
        signature = tf.saved_model.load(str(serving)).signatures["serving_default"]
        uint8 = {b: tf.constant(x) for b, x in pixels.items()}
        formats = {
            "keras": speed(timed(lambda: model.predict_on_batch(floats[1]), repeats),
                           timed(lambda: model.predict_on_batch(floats[16]), repeats)),
            "saved_model": speed(timed(lambda: signature(images=uint8[1]), repeats),
                                 timed(lambda: signature(images=uint8[16]), repeats)),
        }
        for quantize, path in tflite.items():
            name = "tflite_float32" if quantize == "none" else f"tflite_{quantize}"
            formats[name] = tflite_speed(path, size, threads, repeats)

        sizes = {"keras": file_size(model_path), "saved_model": file_size(serving),
                 **{f"tflite_{'float32' if q == 'none' else q}": file_size(p) for q, p in tflite.items()}}
        # An untrained model's Dice means nothing; --quick still runs the code path on it.
        dice = {split: int8_dice(tflite, meta, args.data_dir, dice_limit, split)
                for split in args.dice_splits.split(",")} if args.model or args.quick else None

    result = {
        "model": str(args.model or f"untrained ({'quick' if args.quick else 'lgg architecture'})"),
        "quick": args.quick, "image_size": size, "base_filters": config.get("base_filters"),
        "depth": config.get("depth"), "rebuilt_in_float32": rebuilt,
        "threads": threads, "cpus_on_machine": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "python": sys.version.split()[0],
        "tensorflow": tf.__version__, "load_average_at_start": load_average,
        "repeats": repeats, "export_seconds": round(export_seconds, 1), "speed": formats,
        "file_bytes": sizes, "calibration_images": len(calibration), "dice": dice,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        from tfunet.fileio import write_text

        write_text(args.output, text + "\n")
    return result


if __name__ == "__main__":
    main()
