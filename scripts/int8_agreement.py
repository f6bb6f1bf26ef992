"""How well do the int8 and float32 TFLite exports of the test suite's small model agree, by seed?

`tests/test_export.py` requires the int8 export of `tests/conftest.SMALL` (synthetic data,
64×64, base 8, a few epochs) to draw the masks of the float32 export: largest probability
difference ≤ 0.15 and pooled mask Dice ≥ 0.9 on the held-out slices. This script trains that
model for each seed and batch-norm layer and prints those figures (plus the model's Dice against
the truth and how many tumour pixels it predicts), so the check's bounds can be judged over
seeds rather than on one model. Rows go to --output after each run; a rerun skips finished rows.

    TFUNET_AUTO_PRECISION=bfloat16 python scripts/int8_agreement.py --seeds 42 1 2 3 \\
        --output scripts/results/int8_agreement_small_bf16.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def small_config() -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import SMALL

    return SMALL


def run(seed: int, fused: bool, epochs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="int8_agreement_") as out:
        return run_in(Path(out), seed, fused, epochs)


def run_in(out: Path, seed: int, fused: bool, epochs: int) -> dict:
    import numpy as np

    from tfunet.config import make_config
    from tfunet.data.pipeline import make_pipeline
    from tfunet.data.sources import load_splits
    from tfunet.export import calibration_images, export_tflite
    from tfunet.loading import load_keras_model
    from tfunet.metadata import read_metadata
    from tfunet.metrics import dice
    from tfunet.predictor import load_predictor
    from tfunet.train import train

    config = make_config({**small_config(), "epochs": epochs, "output_dir": str(out),
                          "seed": seed, "fused_batch_norm": fused})
    train(config, verbose=0)
    path = config.model_dir / "best_model.keras"
    model, meta = load_keras_model(path)
    splits = load_splits(config)
    batch = next(iter(make_pipeline(splits.dataset("val").concatenate(splits.dataset("test")),
                                    image_size=config.image_size, batch_size=256, with_metadata=True)))
    images, truth = batch["image"].numpy(), batch["mask"].numpy()
    reference = load_predictor(export_tflite(model, meta, out / "none.tflite")).predict(images)
    int8 = load_predictor(export_tflite(model, meta, out / "int8.tflite", "int8",
                                        calibration_images(meta, 32))).predict(images)
    return {"seed": seed, "fused_batch_norm": fused, "epochs": config.epochs,
            "policy": read_metadata(path)["policy"],
            "max_probability_difference": round(float(np.abs(int8["probabilities"]
                                                              - reference["probabilities"]).max()), 4),
            "int8_vs_float32_mask_dice": round(float(dice(int8["mask"], reference["mask"], "pooled")), 4),
            "float32_tumour_pixels": int(np.count_nonzero(reference["mask"])),
            "float32_dice_vs_truth": round(float(dice(reference["mask"], truth, "pooled")), 4)}


def main(argv=None) -> dict:
    from tfunet.fileio import write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3])
    p.add_argument("--layers", nargs="+", choices=["fused", "keras"], default=["fused", "keras"])
    p.add_argument("--epochs", type=int, help="override SMALL's epochs")
    p.add_argument("--output", help="JSON file to write (and resume from)")
    args = p.parse_args(argv)
    out = Path(args.output) if args.output else None
    epochs = args.epochs or small_config()["epochs"]
    rows = json.loads(out.read_text())["rows"] if out and out.exists() else []
    for seed in args.seeds:
        for layer in args.layers:
            fused = layer == "fused"
            if any((r["seed"], r["fused_batch_norm"], r["epochs"]) == (seed, fused, epochs) for r in rows):
                continue
            rows.append(run(seed, fused, epochs))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            if out:
                write_json(out, {"rows": rows})
    result = {"rows": rows}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
