"""Benchmark training speed for each mixed-precision x XLA choice, and the input pipeline alone;
print JSON.

    python scripts/benchmark.py            # 256x256, batch 16, base-16 U-Net; LGG sample if present
    python scripts/benchmark.py --quick    # 64x64, batch 8, a few steps: a smoke test, not a result

Training: the U-Net compiled exactly as tfunet-train compiles it (loss, metrics, AdamW, the XLA
choice) runs `model.fit` on one batch held in memory, so the figure is the model's own speed,
not the input pipeline's. The first fit (its first step traces, and compiles with XLA) is timed
apart from the steady-state fit; `compile_seconds` is the first fit less the steady time of its
steps. Each choice runs in a fresh process, so `peak_rss_mib` is that choice's own peak.
Pipeline: the training tf.data pipeline (shuffle, augmentation, resize, batching) over the real
LGG files (TFDS shards prepared in a temporary folder, or --cache-dir) or, without them, the
synthetic set. `pipeline_headroom` = pipeline images/s / fastest training images/s; the goal is
at least 5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import DEFAULT_DATA, throughput  # noqa: E402  (one definition of the timing)

from tfunet.runtime import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow starts, as every tfunet command does

HEADROOM_GOAL = 5.0
FULL = dict(image_size=256, batch_size=16, base_filters=16, depth=4, steps=10, warmup=2, batches=30)
QUICK = dict(image_size=64, batch_size=8, base_filters=8, depth=3, steps=3, warmup=1, batches=5)


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def bench_training(args) -> dict:
    """Steady-state training images/s of one precision x XLA choice (run in its own process)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tfunet.config import make_config
    from tfunet.data.synthetic import generate
    from tfunet.model import build_from_config
    from tfunet.precision import dtype_policy, resolve_policy
    from tfunet.runtime import use_jit
    from tfunet.train import compile_model

    config = make_config(dict(image_size=args.image_size, batch_size=args.batch_size,
                              base_filters=args.base_filters, depth=args.depth,
                              mixed_precision=args.precision, jit_compile=args.jit))
    keras.utils.set_random_seed(0)
    data = generate(1, args.batch_size, args.image_size, seed=0)
    batch = (data["image"].astype(np.float32), data["mask"].astype(np.float32))
    ds = tf.data.Dataset.from_tensors(batch).repeat()
    policy = resolve_policy(config.mixed_precision)
    with dtype_policy(policy):
        model = compile_model(build_from_config(config), config, steps_per_epoch=args.steps)

    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=args.warmup, epochs=1, verbose=0)
    first_fit = time.perf_counter() - start
    start = time.perf_counter()
    history = model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
    steady = time.perf_counter() - start
    return {
        "precision": args.precision, "policy": policy, "jit": args.jit, "xla": use_jit(config),
        "compile_seconds": round(max(first_fit - args.warmup * steady / args.steps, 0.0), 2),
        "first_fit_seconds": round(first_fit, 2), "steady_steps": args.steps,
        "steady_images_per_s": round(args.steps * args.batch_size / steady, 2),
        "final_loss": round(float(history.history["loss"][-1]), 4),
        "peak_rss_mib": peak_rss_mib(),
    }


def bench_pipeline(args) -> dict:
    """tf.data images/s of the training pipeline alone (run in its own process)."""
    from tfunet.data.augment import augment
    from tfunet.data.pipeline import make_pipeline

    data_dir = Path(args.data_dir) if args.data_dir else None
    if data_dir and data_dir.exists():
        from tfunet.data.lgg_tfds import LGGSource

        with tempfile.TemporaryDirectory(prefix="tfunet-bench-") as tmp:
            start = time.perf_counter()
            source = LGGSource(data_dir, args.cache_dir or tmp)
            prepare = time.perf_counter() - start
            rate = _pipeline_rate(source, args, make_pipeline, augment)
        name = "lgg"
    else:
        from tfunet.data.synthetic import SyntheticSource

        start = time.perf_counter()
        source = SyntheticSource(8, 20, args.image_size, seed=0)
        prepare = time.perf_counter() - start
        rate = _pipeline_rate(source, args, make_pipeline, augment)
        name = "synthetic"
    return {"source": name, "slices": sum(source.patients().values()), "augment": True,
            "prepare_seconds": round(prepare, 2), "timed_batches": args.batches,
            "images_per_s": round(rate, 1), "peak_rss_mib": peak_rss_mib()}


def _pipeline_rate(source, args, make_pipeline, augment) -> float:
    ds = make_pipeline(source.dataset(sorted(source.patients())), image_size=args.image_size,
                       batch_size=args.batch_size, training=True, seed=0, augment=augment)
    return throughput(ds, args.batches)[0]


def machine() -> dict:
    from tfunet.precision import BF16_CPU_FLAGS, cpu_flags

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    return {"cpu": model, "cpus": len(os.sched_getaffinity(0)),
            "bf16_flags": sorted(cpu_flags() & BF16_CPU_FLAGS),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def run_child(argv: list[str], timeout: float, script: str = __file__) -> dict:
    """Run one measurement in a fresh Python process (`script` with `argv`); its last stdout line
    is the JSON result."""
    out = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1], "argv": argv}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps: a smoke test")
    parser.add_argument("--data-dir", help=f"LGG kaggle_3m (default {DEFAULT_DATA} if present; "
                                           "--quick: synthetic unless given)")
    parser.add_argument("--cache-dir", help="reuse prepared LGG shards from here")
    parser.add_argument("--precision", default=None,
                        help="comma list of off,bfloat16,float16 (default off,bfloat16, plus float16 with a GPU)")
    parser.add_argument("--jit", default="off,on", help="comma list of off,on")
    for key in FULL:
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, help=f"default {FULL[key]} ({QUICK[key]} quick)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--child", choices=("train", "pipeline"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.child == "train":
        print(json.dumps(bench_training(args)))
        return {}
    if args.child == "pipeline":
        print(json.dumps(bench_pipeline(args)))
        return {}

    if args.data_dir is None and not args.quick and DEFAULT_DATA.exists():
        args.data_dir = str(DEFAULT_DATA)
    common = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in FULL]
    if args.quick:
        common.append("--quick")
    import tensorflow as tf

    from tfunet.precision import resolve_policy

    gpus = len(tf.config.list_physical_devices("GPU"))
    precisions = (args.precision or ("off,bfloat16,float16" if gpus else "off,bfloat16")).split(",")
    training = []
    for precision in precisions:
        for jit in args.jit.split(","):
            print(f"benchmark: training, precision {precision}, XLA {jit}", file=sys.stderr)
            training.append(run_child(["--child=train", f"--precision={precision}", f"--jit={jit}", *common],
                                      args.timeout))
    print("benchmark: input pipeline", file=sys.stderr)
    pipeline_argv = ["--child=pipeline", *common]
    if args.data_dir:
        pipeline_argv.append(f"--data-dir={args.data_dir}")
    if args.cache_dir:
        pipeline_argv.append(f"--cache-dir={args.cache_dir}")
    pipeline = run_child(pipeline_argv, args.timeout)

    fastest = max((t.get("steady_images_per_s", 0.0) for t in training), default=0.0)
    headroom = pipeline.get("images_per_s", 0.0) / fastest if fastest else None
    result = {
        "quick": args.quick, "machine": {**machine(), "gpus": gpus}, "tensorflow": tf.__version__,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "TensorFlow's default"),
        "settings": {k: getattr(args, k) for k in FULL},
        "auto": {"policy": resolve_policy("auto"), "xla": bool(gpus)},
        "training": training, "pipeline": pipeline,
        "pipeline_headroom": round(headroom, 1) if headroom else None,
        "pipeline_fast_enough": headroom is not None and headroom >= HEADROOM_GOAL,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
