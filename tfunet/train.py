"""Training: the PyTorch original's recipe, the Keras way.

`train(config)` builds the data splits, the U-Net, BCE+Dice, AdamW with cosine decay, and runs
`model.fit` with checkpoint, CSV, TensorBoard and loss-curve callbacks. It returns the final
metrics of the best model on the validation and test splits.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time

import keras
import tensorflow as tf

from tfunet.callbacks import BestModelCheckpoint, LearningRateLogger, LossCurvePlot
from tfunet.data.augment import augment
from tfunet.data.pipeline import make_pipeline
from tfunet.data.sources import load_splits
from tfunet.data.split import write_split
from tfunet.distribute import make_strategy, shard_by_data, worker_output_dir
from tfunet.errors import TfunetError
from tfunet.losses import BCEDiceLoss
from tfunet.metadata import make_metadata
from tfunet.metrics import training_metrics
from tfunet.model import build_from_config
from tfunet.precision import dtype_policy, resolve_policy
from tfunet.runtime import use_jit
from tfunet.resume import AtomicBackupAndRestore, backup_dir, prepare_resume, truncate_log

BEST_MODEL = "best_model.keras"
MONITOR = "val_dice_pooled"


def make_schedule(config, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Cosine decay from `config.lr` to 0 over the whole run, after an optional linear warm-up.

    The schedule is a function of the optimizer's step, so a resumed run picks up the same
    learning rate."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    total_steps = config.epochs * steps_per_epoch
    if warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            0.0, total_steps - warmup_steps, warmup_target=config.lr, warmup_steps=warmup_steps)
    return keras.optimizers.schedules.CosineDecay(config.lr, total_steps)


def make_optimizer(config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """AdamW: weight decay decoupled from the gradient, unlike the original's Adam + L2."""
    return keras.optimizers.AdamW(learning_rate=make_schedule(config, steps_per_epoch),
                                  weight_decay=config.weight_decay)


def compile_model(model: keras.Model, config, steps_per_epoch: int) -> keras.Model:
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=BCEDiceLoss(config.bce_weight, config.dice_weight),
        metrics=training_metrics(config.threshold),
        jit_compile=use_jit(config),
    )
    return model


def make_callbacks(config, metadata: dict, resumed: bool = False,
                   best_so_far: float | None = None) -> list[keras.callbacks.Callback]:
    """The callbacks of `train`, in an order that makes a kill at any point resumable: an
    epoch's CSV row is written before its best model and its backup (see tfunet.resume)."""
    log_dir = config.log_dir
    csv_path = log_dir / "train_log.csv"
    return [
        LearningRateLogger(),
        keras.callbacks.CSVLogger(str(csv_path), append=resumed),
        BestModelCheckpoint(config.model_dir / BEST_MODEL, metadata, monitor=MONITOR,
                            initial_value_threshold=best_so_far),
        LossCurvePlot(csv_path, log_dir / "loss_curves.png"),
        keras.callbacks.TensorBoard(str(log_dir / "tensorboard"), update_freq="epoch"),
        AtomicBackupAndRestore(str(backup_dir(config))),
    ]


def train(config, verbose: int | None = None) -> dict:
    """Train a U-Net as `config` says; return the best model's val/test metrics and timings.

    verbose: Keras's fit verbosity; by default a progress bar on a terminal and one line per
    epoch otherwise (a log file would fill up with the bar's redraws)."""
    start = time.perf_counter()
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    # First: multi-worker has to start its collective-ops server before any other TensorFlow op.
    distribution = make_strategy(config.strategy)
    strategy, task = distribution.strategy, distribution.task
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    if config.batch_size < strategy.num_replicas_in_sync:
        raise TfunetError(f"--batch-size is the global batch; {config.batch_size} is less than the "
                          f"{strategy.num_replicas_in_sync} replicas")
    user_config = config
    if not task.is_chief:  # only the chief writes into output-dir
        config = dataclasses.replace(config, output_dir=str(worker_output_dir(config.output_dir, task)))
        verbose = 0
    config.model_dir.mkdir(parents=True, exist_ok=True)
    config.log_dir.mkdir(parents=True, exist_ok=True)

    splits = load_splits(config)
    write_split(splits.split, config.log_dir / "split.json")
    num_train = splits.num_slices("train")
    steps_per_epoch = math.ceil(num_train / config.batch_size)
    train_ds = make_pipeline(splits.dataset("train"), image_size=config.image_size,
                             batch_size=config.batch_size, training=True, seed=config.seed,
                             augment=augment if config.augment else None)
    val_ds = make_pipeline(splits.dataset("val"), image_size=config.image_size,
                           batch_size=config.batch_size)
    if task.num_tasks > 1:
        train_ds, val_ds = shard_by_data(train_ds), shard_by_data(val_ds)
    policy = resolve_policy(config.mixed_precision)
    if verbose:
        print(f"tfunet-train: {config.dataset}, {num_train} train / {splits.num_slices('val')} val / "
              f"{splits.num_slices('test')} test slices "
              f"({len(splits.split['train'])}/{len(splits.split['val'])}/{len(splits.split['test'])} patients), "
              f"{config.image_size}x{config.image_size}, {config.epochs} epochs of {steps_per_epoch} steps")
        print(f"tfunet-train: dtype policy {policy}, XLA {'on' if use_jit(config) else 'off'}, "
              f"strategy {distribution.name} with {strategy.num_replicas_in_sync} replica(s)")

    with dtype_policy(policy), strategy.scope():
        model = compile_model(build_from_config(config), config, steps_per_epoch)
    # "policy" is what ran; config.mixed_precision is what was asked for (e.g. "auto").
    metadata = make_metadata(config, splits.split, policy=policy)
    # The resolved policy is compared too: `auto` may mean bfloat16 on one machine, float32 on another.
    resumed = prepare_resume(backup_dir(config), {**user_config.to_dict(), "policy": policy})
    best_so_far = truncate_log(config.log_dir / "train_log.csv", resumed, MONITOR) if resumed else None
    if verbose and resumed:
        print(f"tfunet-train: resuming after epoch {resumed} from {backup_dir(config)}")
    # shuffle=False: the tf.data pipeline already shuffles, seeded (Keras would only warn).
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, shuffle=False,
                        callbacks=make_callbacks(config, metadata, bool(resumed), best_so_far),
                        verbose=verbose)
    train_seconds = time.perf_counter() - start

    best_path = config.model_dir / BEST_MODEL
    with dtype_policy(policy):  # so a float16 model gets back its loss-scale optimizer's variables
        best = keras.saving.load_model(best_path)
    results = {"best_model": str(best_path), "epochs": len(history.epoch),
               "train_seconds": round(train_seconds, 1)}
    for name in ("val", "test"):
        ds = make_pipeline(splits.dataset(name), image_size=config.image_size,
                           batch_size=config.batch_size)
        scores = best.evaluate(ds, return_dict=True, verbose=0)
        results[name] = {k: round(float(v), 4) for k, v in scores.items()}
    if not task.is_chief:
        shutil.rmtree(config.output_dir, ignore_errors=True)
    if verbose:
        print("tfunet-train: final metrics of the best model")
        print(json.dumps(results, indent=2))
    return results
