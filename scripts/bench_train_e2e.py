"""Training speed end to end, tfunet against a PyTorch U-Net of the same architecture, on real
LGG slices, and both against the CPU's limit; print JSON.

    pip install -e ".[bench]"     # torch==2.13.0, the CPU wheel
    python scripts/bench_train_e2e.py --data-dir ~/.cache/lgg64/kaggle_3m --output e2e.json

tfunet side: the real `tfunet-train` loop (`tfunet.train.train_split`: the tf.data pipeline with
augmentation, `model.fit` with validation every epoch, the CSV / checkpoint / loss-curve /
TensorBoard / backup callbacks) on a seeded split of `--patients` patients, timed by a callback.
PyTorch side: the same U-Net layer for layer (3x3 convolutions without bias + batch norm
(momentum 0.1, eps 1e-3) + ReLU twice per level, 2x2 max-pooling, 2x2 stride-2 transposed
convolutions, concatenation, 1x1 head with the -3.9 bias prior, input scaled by 1/255), the same
loss (BCE-with-logits + batch-pooled soft Dice, smooth 1), AdamW (lr 1e-3, weight decay 1e-5)
with per-step cosine decay, batch 16, bf16 autocast where tfunet trains in bfloat16; a plain
`DataLoader` over the decoded slices of the same patients, validation and a best-checkpoint
`torch.save` every epoch. It does not augment (tfunet does): that favours PyTorch.

For each side and width: epoch 1 is warm-up; the figures are means over the later epochs:
`train_images_per_s` (training images / epoch wall time: end to end), `step_images_per_s`
(training images / time inside the training steps, data waits included), `epoch_seconds` and
`outside_steps_seconds` (validation, callbacks, checkpointing). The limit: a 4096^2 matmul
measured in this run (float32, and bfloat16 when the policy is), divided by 3x the forward
FLOPs of one image (convolutions, counted from the Keras model's layers), gives the images/s no
implementation can beat; each side's share of it is reported. Each measurement runs in a fresh
process; `--output` keeps finished rows, so a rerun only does what is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_evaluate import gflops_per_slice  # noqa: E402  (one FLOP count of the U-Net)
from benchmark import machine, run_child  # noqa: E402

SIDES = ("tfunet", "torch")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="a folder of LGG patients (kaggle_3m)")
    p.add_argument("--patients", type=int, default=12, help="patients used (seeded 70/15/15 split)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up")
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32], help="base filters")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mixed-precision", default="auto", help="as tfunet-train's flag")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output", help="JSON file: finished rows are kept and skipped on a rerun")
    p.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                   help="a tfunet-train option for the tfunet side (repeatable), e.g. steps_per_execution=4: "
                        "a lever to measure; its rows are keyed by the options set")
    p.add_argument("--child", choices=("tfunet", "torch", "peak"), help=argparse.SUPPRESS)
    p.add_argument("--base", type=int, help=argparse.SUPPRESS)
    p.add_argument("--split-file", help=argparse.SUPPRESS)
    p.add_argument("--policy", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def bench_split(args, out_dir: Path) -> Path:
    """A split file over `--patients` patients of the folder, chosen and split with the seed."""
    import numpy as np

    from tfunet.data.lgg import list_slices, locate
    from tfunet.data.split import split_patients, write_split

    slices, _ = list_slices(locate(args.data_dir))
    ids = sorted({s.patient_id for s in slices})
    if len(ids) < max(args.patients, 3):
        raise SystemExit(f"--patients {args.patients}: the folder has {len(ids)} patients")
    chosen = sorted(np.random.default_rng(args.seed).choice(ids, args.patients, replace=False).tolist())
    path = out_dir / "split.json"
    write_split(split_patients(chosen, seed=args.seed), path)
    return path


def options(args) -> dict:
    """The --set options as tfunet-train config values (coerced by make_config)."""
    pairs = [item.split("=", 1) for item in args.set]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit("--set takes OPTION=VALUE")
    return {key.replace("-", "_"): int(value) if value.isdigit() else value for key, value in pairs}


def steady(epochs: list[dict]) -> dict:
    """Means over the epochs after the first (warm-up)."""
    later = epochs[1:] or epochs
    images = later[0]["train_images"]
    epoch_s = sum(e["epoch_seconds"] for e in later) / len(later)
    step_s = sum(e["step_seconds"] for e in later) / len(later)
    return {"train_images_per_epoch": images, "measured_epochs": len(later),
            "train_images_per_s": round(images / epoch_s, 2), "step_images_per_s": round(images / step_s, 2),
            "epoch_seconds": round(epoch_s, 1), "outside_steps_seconds": round(epoch_s - step_s, 1),
            "warmup_epoch_seconds": round(epochs[0]["epoch_seconds"], 1)}


# --- tfunet ---------------------------------------------------------------------------------------

def run_tfunet(args) -> dict:
    from tfunet.runtime import configure_tensorflow

    configure_tensorflow()
    import keras

    from tfunet.config import make_config
    from tfunet.data.sources import load_splits
    from tfunet.train import start_session, train_split

    out = Path(tempfile.mkdtemp(prefix="tfunet_e2e_"))
    config = make_config({"dataset": "lgg", "data_dir": args.data_dir, "split_file": args.split_file,
                          "image_size": args.image_size, "base_filters": args.base, "batch_size": args.batch_size,
                          "epochs": args.epochs, "mixed_precision": args.mixed_precision, "seed": args.seed,
                          "output_dir": str(out), **options(args)})
    session = start_session(config, verbose=0)
    splits = load_splits(config)
    images = splits.num_slices("train")

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs, self.begin, self.steps, self.step_start = [], None, 0.0, None

        def _close(self, now):
            if self.begin is not None:
                self.epochs.append({"train_images": images, "epoch_seconds": now - self.begin,
                                    "step_seconds": self.steps})

        def on_epoch_begin(self, epoch, logs=None):
            now = time.perf_counter()
            self._close(now)
            self.begin, self.steps = now, 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self.step_start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.steps += time.perf_counter() - self.step_start

        def on_train_end(self, logs=None):
            self._close(time.perf_counter())

    timer = Timer()
    keras.utils.set_random_seed(config.seed)
    train_split(config, splits, session, config.model_dir, config.log_dir, resume_key=config.to_dict(),
                callbacks=[timer])
    return {"policy": session.policy, "epochs": timer.epochs, **steady(timer.epochs)}


# --- PyTorch --------------------------------------------------------------------------------------

def torch_unet(base: int, depth: int = 4):
    import torch
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.1),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.1),
            nn.ReLU(inplace=True))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [base * 2 ** level for level in range(depth + 1)]
            self.down = nn.ModuleList([block(3 if i == 0 else widths[i - 1], widths[i]) for i in range(depth)])
            self.bottleneck = block(widths[depth - 1], widths[depth])
            self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                     for i in reversed(range(depth))])
            self.dec = nn.ModuleList([block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
            self.head = nn.Conv2d(base, 1, 1)
            nn.init.constant_(self.head.bias, -3.9)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

        def forward(self, x):
            x = x / 255.0
            skips = []
            for down in self.down:
                x = down(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.bottleneck(x)
            for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
                x = dec(torch.cat([up(x), skip], dim=1))
            return self.head(x)

    return UNet()


def run_torch(args) -> dict:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from tfunet.data.lgg import list_slices, locate, read_slice
    from tfunet.data.split import read_split_file

    torch.manual_seed(args.seed)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    split = read_split_file(args.split_file)
    location = locate(args.data_dir)
    slices, _ = list_slices(location)
    reader = location.reader()

    def decoded(patients):
        chosen = [s for s in slices if s.patient_id in set(patients)]
        pairs = [read_slice(reader, s) for s in chosen]
        images = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).float()
        masks = torch.from_numpy(np.stack([p[1] for p in pairs])).permute(0, 3, 1, 2).float()
        if args.image_size != images.shape[-1]:
            images = torch.nn.functional.interpolate(images, size=args.image_size, mode="bilinear")
            masks = (torch.nn.functional.interpolate(masks, size=args.image_size) > 0.5).float()
        return TensorDataset(images, masks)

    train_set, val_set = decoded(split["train"]), decoded(split["val"])
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=args.batch_size)
    model = torch_unet(args.base)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    steps = math.ceil(len(train_set) / args.batch_size) * args.epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    bf16 = args.policy == "mixed_bfloat16"

    def loss_fn(logits, masks):
        logits = logits.float()  # sums over pixels in float32, as tfunet does
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, masks)
        probs = torch.sigmoid(logits)
        dice = (2 * (probs * masks).sum() + 1) / (probs.sum() + masks.sum() + 1)
        return bce + 1 - dice

    checkpoint = Path(tempfile.mkdtemp(prefix="torch_e2e_")) / "best.pt"
    best, epochs = -1.0, []
    for _ in range(args.epochs):
        begin = time.perf_counter()
        model.train()
        for images, masks in train_loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(images)
            loss = loss_fn(logits, masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        step_seconds = time.perf_counter() - begin
        model.eval()
        inter = total = 0.0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for images, masks in val_loader:
                predicted = (model(images).float() > 0).float()
                inter += float((predicted * masks).sum())
                total += float(predicted.sum() + masks.sum())
        dice = 2 * inter / total if total else 1.0
        if dice > best:
            best = dice
            torch.save(model.state_dict(), checkpoint)
        epochs.append({"train_images": len(train_set), "epoch_seconds": time.perf_counter() - begin,
                       "step_seconds": step_seconds, "val_dice_pooled": round(dice, 4)})
    return {"policy": args.policy, "torch": torch.__version__, "epochs": epochs, **steady(epochs)}


# --- the limit ------------------------------------------------------------------------------------

def run_peak(args) -> dict:
    """Matmul GFLOP/s of TensorFlow on this CPU (float32, and bfloat16 if the policy is), and the
    forward GFLOP of one image per width."""
    from tfunet.runtime import configure_tensorflow

    configure_tensorflow()
    import tensorflow as tf

    from tfunet.model import build_unet
    from tfunet.precision import resolve_policy

    policy = resolve_policy(args.mixed_precision)
    n = 4096
    out = {"policy": policy, "matmul_gflops": {}}
    for dtype in (tf.float32, tf.bfloat16) if policy == "mixed_bfloat16" else (tf.float32,):
        a = tf.random.normal((n, n), dtype=tf.float32)
        a = tf.cast(a, dtype)
        matmul = tf.function(lambda x: tf.matmul(x, x))
        matmul(a).numpy()
        best = math.inf
        for _ in range(5):
            start = time.perf_counter()
            matmul(a).numpy()
            best = min(best, time.perf_counter() - start)
        out["matmul_gflops"][dtype.name] = round(2 * n ** 3 / best / 1e9, 1)
    out["forward_gflop_per_image"] = {str(base): gflops_per_slice(build_unet(args.image_size, base_filters=base))
                                      for base in args.widths}
    return out


# --- the whole comparison -------------------------------------------------------------------------

def child_argv(args, child: str, base: int | None, split_file: Path, policy: str | None = None) -> list[str]:
    argv = ["--child", child, "--data-dir", args.data_dir, "--epochs", str(args.epochs),
            "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
            "--mixed-precision", args.mixed_precision, "--seed", str(args.seed),
            "--split-file", str(split_file), "--widths", *map(str, args.widths)]
    if base is not None:
        argv += ["--base", str(base)]
    for item in args.set:
        argv += ["--set", item]
    if policy:
        argv += ["--policy", policy]
    return argv


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        result = {"tfunet": run_tfunet, "torch": run_torch, "peak": run_peak}[args.child](args)
        print(json.dumps(result))
        return result
    previous = json.loads(Path(args.output).read_text()) if args.output and Path(args.output).is_file() else {}
    report = {"machine": machine(), "settings": {k: getattr(args, k) for k in (
        "patients", "epochs", "image_size", "batch_size", "mixed_precision", "seed")}, "rows": {}}
    if previous.get("settings") == report["settings"]:
        report["rows"] = previous.get("rows", {})
        report["limit"] = previous.get("limit")

    def save():
        report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        if args.output:
            from tfunet.fileio import write_json

            write_json(args.output, report)

    work = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    split_file = bench_split(args, work)
    if not report.get("limit"):
        report["limit"] = run_child(child_argv(args, "peak", None, split_file), timeout=3600, script=__file__)
        save()
    limit = report["limit"]
    peak = limit["matmul_gflops"].get("bfloat16" if limit["policy"] == "mixed_bfloat16" else "float32")
    label = ",".join(sorted(args.set))
    for base in args.widths:
        row = report["rows"].setdefault(f"{base}" + (f" {label}" if label else ""), {})
        train_gflop = 3 * limit["forward_gflop_per_image"][str(base)]
        row["limit_images_per_s"] = round(peak / train_gflop, 2)
        for side in args.sides:
            if side in row and "error" not in row[side]:
                continue
            if side == "torch" and label:
                continue  # a lever of tfunet's: PyTorch's row is the one without --set
            argv = child_argv(args, side, base, split_file, limit["policy"] if side == "torch" else None)
            row[side] = run_child(argv, timeout=6 * 3600, script=__file__)
            save()
        for side in SIDES:
            if side in row and "step_images_per_s" in row[side]:
                row[side]["steady_step_share_of_limit"] = round(row[side]["step_images_per_s"]
                                                                / row["limit_images_per_s"], 3)
                row[side]["end_to_end_share_of_limit"] = round(row[side]["train_images_per_s"]
                                                               / row["limit_images_per_s"], 3)
        reference = report["rows"].get(str(base), {}).get("torch", {})  # a lever's row has none of its own
        if "train_images_per_s" in row.get("tfunet", {}) and "train_images_per_s" in reference:
            row["tfunet_over_torch_end_to_end"] = round(row["tfunet"]["train_images_per_s"]
                                                        / reference["train_images_per_s"], 3)
            row["tfunet_over_torch_steps"] = round(row["tfunet"]["step_images_per_s"]
                                                   / reference["step_images_per_s"], 3)
        save()
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
