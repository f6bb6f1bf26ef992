"""Time `tfunet-predict` on a BraTS-sized NIfTI case: 240x240x155, three sequences, int16.

Writes a synthetic case (smooth random volumes, not an image of a brain: the speed of a U-Net
does not depend on what it sees), then predicts it with the LGG architecture (256x256, base 32,
depth 4, untrained weights) as a .keras model and as its full-int8 TFLite export, through the
same code path as the command (tfunet.volumes.predict_case). Prints JSON: wall seconds per case
and slices/s, on the threads given.

    python scripts/bench_volumes.py [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_evaluate import cpu_description  # noqa: E402
from bench_serving import pin_threads, untrained_model  # noqa: E402

from tfunet.runtime import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow starts, as every tfunet command does

BRATS_SHAPE = (240, 240, 155)


def write_case(folder: Path, shape) -> Path:
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(0)
    case = folder / "BraTS-bench"
    case.mkdir()
    for suffix in ("t1n", "t2f", "t1c"):
        data = ndimage.gaussian_filter(rng.normal(0, 1, shape), 3) * 4000 + 1000
        data[:20], data[-20:] = 0, 0  # background, as in skull-stripped data
        nib.save(nib.Nifti1Image(data.astype(np.int16), np.diag([-1.0, -1.0, 1.0, 1.0])),
                 case / f"BraTS-bench-{suffix}.nii.gz")
    return case


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="64 px model, 64x64x16 case: a smoke test")
    args = p.parse_args(argv)
    threads = pin_threads(args.threads)

    from tfunet.export import calibration_images, export_tflite
    from tfunet.loading import load_keras_model
    from tfunet.predictor import load_predictor
    from tfunet.volumes import find_case, predict_case

    shape = (64, 64, 16) if args.quick else BRATS_SHAPE
    results = {}
    with tempfile.TemporaryDirectory(prefix="tfunet-bench-volumes-") as tmp:
        tmp = Path(tmp)
        model_path = untrained_model(tmp, args.quick)
        model, meta = load_keras_model(model_path)
        tflite = export_tflite(model, meta, tmp / "model_int8.tflite", "int8", calibration_images(meta, 16))
        case = find_case(write_case(tmp, shape))
        for name, path in (("keras_float32", model_path), ("tflite_int8", tflite)):
            predictor = load_predictor(path)
            predict_case(predictor, case, tmp / f"warm_{name}")  # tracing and first calls
            start = time.perf_counter()
            report = predict_case(predictor, case, tmp / name)
            seconds = time.perf_counter() - start
            results[name] = {"seconds_per_case": round(seconds, 2),
                             "slices_per_s": round(shape[2] / seconds, 2),
                             "tumour_voxels": report["tumour_voxels"]}
            print(f"bench_volumes: {name}: {seconds:.1f} s per case", file=sys.stderr)
    report = {"benchmark": "tfunet-predict on one NIfTI case (read, reorient, intensity rule, predict, "
                           "post-process, write mask and report)",
              "case_shape": list(shape), "model": {"image_size": int(meta["image_size"]),
                                                   "base_filters": meta["config"]["base_filters"],
                                                   "depth": meta["config"]["depth"]},
              "threads": threads, "cpu": cpu_description(), "load_average": [round(x, 2) for x in os.getloadavg()],
              "quick": args.quick, "results": results}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
