"""Training: the PyTorch original's recipe, the Keras way.

`train(config)` builds the data splits, the U-Net, BCE+Dice, AdamW with cosine decay, and runs
`model.fit` with checkpoint, CSV, TensorBoard and loss-curve callbacks. It returns the final
metrics of the best model on the validation and test splits.
"""

from __future__ import annotations

import json
import math
import time

import keras
import tensorflow as tf

from tfunet.callbacks import BestModelCheckpoint, LossCurvePlot
from tfunet.data.pipeline import make_pipeline
from tfunet.data.sources import load_splits
from tfunet.data.split import write_split
from tfunet.losses import BCEDiceLoss
from tfunet.metadata import make_metadata
from tfunet.metrics import training_metrics
from tfunet.model import build_from_config

BEST_MODEL = "best_model.keras"


def make_optimizer(config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """AdamW (decoupled weight decay) with cosine decay over the whole run, after an optional
    linear warm-up. The schedule is a function of the optimizer's step, so a resumed run picks
    up the same learning rate."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    total_steps = config.epochs * steps_per_epoch
    if warmup_steps:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, total_steps - warmup_steps, warmup_target=config.lr, warmup_steps=warmup_steps)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(config.lr, total_steps)
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)


def use_jit(config) -> bool:
    """XLA on GPUs, off on CPUs, where it measured slower (see README)."""
    if config.jit_compile == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return config.jit_compile == "on"


def compile_model(model: keras.Model, config, steps_per_epoch: int) -> keras.Model:
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=BCEDiceLoss(config.bce_weight, config.dice_weight),
        metrics=training_metrics(config.threshold),
        jit_compile=use_jit(config),
    )
    return model


def make_callbacks(config, metadata: dict) -> list[keras.callbacks.Callback]:
    log_dir = config.log_dir
    csv_path = log_dir / "train_log.csv"
    return [
        BestModelCheckpoint(config.model_dir / BEST_MODEL, metadata),
        keras.callbacks.CSVLogger(str(csv_path)),
        LossCurvePlot(csv_path, log_dir / "loss_curves.png"),
        keras.callbacks.TensorBoard(str(log_dir / "tensorboard"), update_freq="epoch"),
    ]


def train(config, verbose: int = 1) -> dict:
    """Train a U-Net as `config` says; return the best model's val/test metrics and timings."""
    start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    config.model_dir.mkdir(parents=True, exist_ok=True)
    config.log_dir.mkdir(parents=True, exist_ok=True)

    splits = load_splits(config)
    write_split(splits.split, config.log_dir / "split.json")
    num_train = splits.num_slices("train")
    steps_per_epoch = math.ceil(num_train / config.batch_size)
    train_ds = make_pipeline(splits.dataset("train"), image_size=config.image_size,
                             batch_size=config.batch_size, training=True, seed=config.seed)
    val_ds = make_pipeline(splits.dataset("val"), image_size=config.image_size,
                           batch_size=config.batch_size)
    if verbose:
        print(f"tfunet-train: {config.dataset}, {num_train} train / {splits.num_slices('val')} val / "
              f"{splits.num_slices('test')} test slices "
              f"({len(splits.split['train'])}/{len(splits.split['val'])}/{len(splits.split['test'])} patients), "
              f"{config.image_size}x{config.image_size}, {config.epochs} epochs of {steps_per_epoch} steps")

    model = compile_model(build_from_config(config), config, steps_per_epoch)
    metadata = make_metadata(config, splits.split)
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                        callbacks=make_callbacks(config, metadata), verbose=verbose)
    train_seconds = time.perf_counter() - start

    best_path = config.model_dir / BEST_MODEL
    best = keras.saving.load_model(best_path)
    results = {"best_model": str(best_path), "epochs": len(history.epoch),
               "train_seconds": round(train_seconds, 1)}
    for name in ("val", "test"):
        ds = make_pipeline(splits.dataset(name), image_size=config.image_size,
                           batch_size=config.batch_size)
        scores = best.evaluate(ds, return_dict=True, verbose=0)
        results[name] = {k: round(float(v), 4) for k, v in scores.items()}
    if verbose:
        print("tfunet-train: final metrics of the best model")
        print(json.dumps(results, indent=2))
    return results
