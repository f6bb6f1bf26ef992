"""Does scoring at the model size flatter a model trained below the data's size? Rescore a
cross-validation's held-out patients at the data's own size and print JSON of both.

    python scripts/score_native.py ~/runs/ablate/recipe_fast --data-dir ~/.cache/lgg64/kaggle_3m

Cross-validation and tfunet-evaluate score slices at the model size: a 128x128 model against
masks resized nearest-neighbour to 128x128 (docs/evaluation.md). A user's masks come out at the
data's size (the serving computation resizes the probabilities back, bilinear), and a 256x256
model is scored there. This script predicts each fold's held-out patients with its fold model
through that serving computation, scores the masks against the original masks (default
post-processing: threshold 0.5, nothing else), and pairs each patient's 3-D Dice with the one
the cross-validation reported (its `default` figures).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablate import PATIENT_FIGURES, paired  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="the output folder of a `tfunet-train --folds` run (an ablate.py row)")
    p.add_argument("--data-dir", required=True, help="the LGG folder it trained on")
    p.add_argument("--batch-size", type=int, default=16)
    return p.parse_args(argv)


def native_patients(model_path: Path, splits, batch_size: int) -> list:
    """The held-out ("val") patients as `ValidationPatient`s at the data's own size."""
    import numpy as np

    from tfunet.data.pipeline import make_pipeline
    from tfunet.evaluate import by_patient
    from tfunet.postprocess import Settings, ValidationPatient
    from tfunet.predictor import load_predictor, serve_eagerly

    predictor = load_predictor(model_path)
    # The serving computation under default post-processing, whatever the fold model's metadata says.
    meta = {**predictor.meta, **Settings().to_metadata()}
    size = int(next(iter(splits.dataset("val").take(1)))["image"].shape[0])

    def slices():
        batches = make_pipeline(splits.dataset("val"), image_size=size, batch_size=batch_size, with_metadata=True)
        for batch in batches.as_numpy_iterator():
            probs = serve_eagerly(predictor.raw, meta, batch["image"])["probabilities"].numpy()
            for i, pid in enumerate(batch["patient_id"]):
                yield pid.decode(), int(batch["slice"][i]), (batch["mask"][i] > 0, probs[i])

    counts = splits.source.patients()
    return [ValidationPatient(np.stack([truth for truth, _ in items]), np.stack([probs for _, probs in items]),
                              patient_id=pid)
            for pid, items in by_patient(slices(), {p: counts[p] for p in splits.split["val"]})]


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = Path(args.run).expanduser()
    report_path = run / "logs" / "cv_metrics.json"
    if not report_path.is_file():
        raise SystemExit(f"score_native: {report_path} not found: is {run} a finished `tfunet-train --folds` run?")
    from tfunet.runtime import configure_tensorflow

    configure_tensorflow()
    from tfunet.config import make_config
    from tfunet.crossval import fold_splits, score_patients
    from tfunet.data.sources import make_source
    from tfunet.data.split import read_split_file
    from tfunet.postprocess import Settings

    report = json.loads(report_path.read_text())
    plan = read_split_file(run / "logs" / "split.json")
    source = make_source(make_config({"dataset": "lgg", "data_dir": args.data_dir}))
    patients = [patient for k in range(len(plan["folds"]))
                for patient in native_patients(run / "saved_models" / f"fold_{k}" / "best_model.keras",
                                               fold_splits(source, {"folds": plan["folds"], "test": []}, k),
                                               args.batch_size)]
    native = score_patients(patients, Settings())
    at_data_size = {"per_patient_dice": {pid: p["dice_3d"] for pid, p in native["patients"].items()}}
    result = {
        "run": str(run), "model_size": report["config"]["image_size"],
        "at_model_size": {key: report["default"]["all_patients"][key] for key in PATIENT_FIGURES},
        "at_data_size": {key: native[key] for key in PATIENT_FIGURES},
        "data_minus_model_size_patient_dice": paired(at_data_size, report["default"]),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
