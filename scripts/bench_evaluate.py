"""Benchmark tfunet-evaluate's scoring speed; prints JSON.

Scores synthetic slices with a randomly initialised U-Net through the same path as
`tfunet-evaluate` (tf.data pipeline, model, threshold, per-slice counts, per-patient grouping),
without TTA or post-processing, in each precision asked for. The issue's target is >= 10
slices/s at 256x256 with a base-32 model on 2 CPU cores.

    python scripts/bench_evaluate.py                 # 256 px, base 32, depth 4, 2 threads
    python scripts/bench_evaluate.py --quick         # a smoke test in seconds
    python scripts/bench_evaluate.py --onednn off    # TF_ENABLE_ONEDNN_OPTS=0 (tfunet turns it on on x86)

Run it on a quiet machine: other processes on the same cores lower the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

TARGET_SLICES_PER_S = 10.0
MIXED_PRECISION = {"float32": "off", "bfloat16": "bfloat16"}  # --precisions names -> load_predictor


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 px, base 8, depth 3, 8 slices: a smoke test")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--base-filters", type=int, default=32)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--slices", type=int, default=96, help="slices scored per measurement")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="CPU cores to use (pins the process)")
    p.add_argument("--precisions", default="float32,bfloat16")
    p.add_argument("--jit", choices=("off", "on", "both"), default="both", help="XLA for the forward pass")
    p.add_argument("--onednn", choices=("default", "on", "off"), default="default",
                   help="set TF_ENABLE_ONEDNN_OPTS before TensorFlow starts")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.base_filters, args.depth, args.slices, args.batch_size = 64, 8, 3, 8, 4
    return args


def cpu_description() -> dict:
    info = {"machine": platform.machine(), "cpus_visible": os.cpu_count(), "model": None, "bf16": False}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and info["model"] is None:
            info["model"] = value.strip()
        if key.strip() == "flags":
            info["bf16"] = bool({"avx512_bf16", "amx_bf16"} & set(value.split()))
    return info


def gflops_per_slice(model) -> float:
    """Multiply-adds of the convolutions (x2 = FLOPs) for one slice: what any CPU kernel must do,
    so slices/s can never beat the cores' peak FLOP/s divided by this."""
    macs = 0
    for layer in model.layers:
        if layer.__class__.__name__ in ("Conv2D", "Conv2DTranspose"):
            kh, kw, cin, cout = layer.kernel.shape
            if layer.__class__.__name__ == "Conv2DTranspose":  # kernel is (kh, kw, out, in)
                _, h, w, _ = layer.input.shape  # every input pixel meets the whole kernel once
            else:
                _, h, w, _ = layer.output.shape
            macs += h * w * kh * kw * cin * cout
    return round(2 * macs / 1e9, 2)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.onednn != "default":
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if args.onednn == "on" else "0"
    if hasattr(os, "sched_setaffinity") and args.threads < len(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])

    from tfunet.runtime import configure_tensorflow

    configure_tensorflow()  # before TensorFlow: its settings, as every tfunet command has them
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from tfunet.config import make_config
    from tfunet.data.sources import DataSplits
    from tfunet.data.synthetic import SyntheticSource
    from tfunet.evaluate import evaluate
    from tfunet.predictor import load_predictor
    from tfunet.metadata import make_metadata, write_metadata
    from tfunet.model import build_from_config

    slices_per_patient = min(args.slices, 16)
    patients = -(-args.slices // slices_per_patient)
    config = make_config({"image_size": args.image_size, "base_filters": args.base_filters,
                          "depth": args.depth, "num_patients": patients,
                          "slices_per_patient": slices_per_patient, "batch_size": args.batch_size})
    source = SyntheticSource(patients, slices_per_patient, args.image_size, seed=0)
    ids = sorted(source.patients())
    splits = DataSplits(source, {"train": ids, "val": [], "test": ids[:1]})
    jits = {"off": [False], "on": [True], "both": [False, True]}[args.jit]

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "bench.keras"
        model = build_from_config(config)
        model.save(model_path)
        write_metadata(model_path, make_metadata(config, splits.split))
        for precision in args.precisions.split(","):
            for jit in jits:
                scorer = load_predictor(model_path, mixed_precision=MIXED_PRECISION[precision],
                                        jit_compile=jit, batch_size=args.batch_size)
                # Warm-up on one patient: tracing and XLA compilation are not scoring speed.
                evaluate(scorer, splits, "test", batch_size=args.batch_size, progress=False)
                load_before = os.getloadavg()[0]
                start, cpu_start = time.perf_counter(), time.process_time()
                result = evaluate(scorer, splits, "all", batch_size=args.batch_size, progress=False)
                seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
                n = result.summary["num_slices"]
                # CPU seconds per slice barely move when other processes share the cores, unlike
                # slices/s: threads / cpu_seconds_per_slice is the speed the cores would give alone.
                results.append({"precision": precision, "jit_compile": jit, "slices": n,
                                "seconds": round(seconds, 3), "slices_per_s": round(n / seconds, 2),
                                "cpu_seconds_per_slice": round(cpu_seconds / n, 4),
                                "load_average_before": round(load_before, 2)})
                print(f"bench_evaluate: {precision}, jit {jit}: {n / seconds:.2f} slices/s", file=sys.stderr)

    best = max(r["slices_per_s"] for r in results)
    report = {
        "benchmark": "tfunet-evaluate scoring, no TTA, no post-processing",
        "quick": args.quick,
        "model": {"image_size": args.image_size, "base_filters": args.base_filters, "depth": args.depth,
                  "parameters": int(model.count_params()), "gflops_per_slice": gflops_per_slice(model)},
        "batch_size": args.batch_size,
        "threads": args.threads,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "TensorFlow's default"),
        "tensorflow": tf.__version__,
        "cpu": cpu_description(),
        "results": results,
        "best_slices_per_s": best,
        "target_slices_per_s": TARGET_SLICES_PER_S,
        "meets_target": None if args.quick else best >= TARGET_SLICES_PER_S,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
