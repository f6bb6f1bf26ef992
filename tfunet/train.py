"""Training: the PyTorch original's recipe, the Keras way.

`train(config)` builds the data splits, the U-Net, BCE+Dice, AdamW with cosine decay, and runs
`model.fit` with checkpoint, CSV, TensorBoard and loss-curve callbacks. It returns the final
metrics of the best model on the validation and test splits.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import sys
from pathlib import Path

import keras
import tensorflow as tf

from tfunet.callbacks import BestModelCheckpoint, LearningRateLogger, LossCurvePlot
from tfunet.config import EXECUTION_ONLY, TrainConfig
from tfunet.data.augment import augment
from tfunet.data.pipeline import make_oversampled_pipeline, make_pipeline, with_threads
from tfunet.data.sources import load_splits, tumour_burden
from tfunet.data.split import write_split
from tfunet.distribute import make_strategy, shard_by_data, worker_output_dir
from tfunet.errors import TfunetError
from tfunet.losses import BCEDiceLoss
from tfunet.metadata import make_metadata
from tfunet.metrics import training_metrics
from tfunet.model import build_from_config, unet_args
from tfunet.precision import dtype_policy, resolve_policy
from tfunet.runtime import use_jit
from tfunet.training_model import TrainingUNet
from tfunet.resume import (WALL_FILE, AtomicBackupAndRestore, WallClock, backed_up_epoch, backup_dir, prepare_resume,
                           truncate_log)

BEST_MODEL = "best_model.keras"
MONITOR = "val_dice_pooled"


@keras.saving.register_keras_serializable(package="tfunet")
class RestartAt(keras.optimizers.schedules.LearningRateSchedule):
    """`first` until step `boundary`, then `second` counted from the boundary: the resolution
    schedule's fresh cosine at full size (`--fine-lr`), where the model must relearn the scale
    of what it sees, which the tail of one long cosine is too small to do."""

    def __init__(self, first, second, boundary: int):
        self.first, self.second, self.boundary = first, second, int(boundary)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        after = keras.ops.maximum(step - self.boundary, 0.0)
        return keras.ops.where(step < self.boundary, self.first(step), self.second(after))

    def get_config(self):
        return {"first": keras.optimizers.schedules.serialize(self.first),
                "second": keras.optimizers.schedules.serialize(self.second), "boundary": self.boundary}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["first"]),
                   keras.optimizers.schedules.deserialize(config["second"]), config["boundary"])


def make_schedule(config, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Cosine decay from `config.lr` to 0 over the whole run, after an optional linear warm-up;
    with `config.fine_lr`, the cosine ends with the coarse stage and a second one decays from
    fine_lr over the full-size epochs.

    The schedule is a function of the optimizer's step, so a resumed run picks up the same
    learning rate."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    total_steps = (config.coarse_epochs if config.fine_lr else config.epochs) * steps_per_epoch
    if warmup_steps:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, total_steps - warmup_steps, warmup_target=config.lr, warmup_steps=warmup_steps)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(config.lr, total_steps)
    if not config.fine_lr:
        return schedule
    fine_steps = (config.epochs - config.coarse_epochs) * steps_per_epoch
    return RestartAt(schedule, keras.optimizers.schedules.CosineDecay(config.fine_lr, fine_steps), total_steps)


def make_loss(config) -> BCEDiceLoss:
    return BCEDiceLoss(config.bce_weight, config.dice_weight, per_slice=config.dice_per_slice)


def make_optimizer(config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """AdamW: weight decay decoupled from the gradient, unlike the original's Adam + L2."""
    return keras.optimizers.AdamW(learning_rate=make_schedule(config, steps_per_epoch),
                                  weight_decay=config.weight_decay)


def compile_model(model: keras.Model, config, steps_per_epoch: int) -> keras.Model:
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=make_loss(config),
        metrics=training_metrics(config.threshold),
        jit_compile=use_jit(config),
        steps_per_execution=config.steps_per_execution,
    )
    return model


def make_callbacks(metadata: dict, model_dir: Path, log_dir: Path, resumed: bool = False,
                   best_so_far: float | None = None, monitor: str | None = MONITOR,
                   extra: list | None = None, keep_backup: bool = False) -> list[keras.callbacks.Callback]:
    """The callbacks of `train`, in an order that makes a kill at any point resumable: an
    epoch's CSV row is written before its best model and its backup (see tfunet.resume).
    monitor=None saves every epoch's model (the last one stays): a run that selects nothing.
    keep_backup: leave the backup when fit ends, for a next stage of training to start from."""
    csv_path = log_dir / "train_log.csv"
    return [
        LearningRateLogger(),
        keras.callbacks.CSVLogger(str(csv_path), append=resumed),
        BestModelCheckpoint(model_dir / BEST_MODEL, metadata, monitor=monitor,
                            initial_value_threshold=best_so_far),
        LossCurvePlot(csv_path, log_dir / "loss_curves.png"),
        keras.callbacks.TensorBoard(str(log_dir / "tensorboard"), update_freq="epoch"),
        *(extra or []),
        AtomicBackupAndRestore(str(backup_dir(log_dir)), delete_checkpoint=not keep_backup),
    ]


def validation_epochs(first: int, end: int, every: int) -> list[int]:
    """The 1-based epochs of a fit over epochs first+1..end that validate: every `every`-th, and
    always the first (Keras's CSVLogger takes its columns from the first epoch it logs) and the
    last (the epoch a run without selection keeps; with selection, it is always a candidate)."""
    return sorted({first + 1, end, *range(every, end + 1, every)} & set(range(first + 1, end + 1)))


@dataclasses.dataclass
class Session:
    """What every training run of one command shares: the distribution strategy, the dtype policy
    and the verbosity."""

    distribution: object
    policy: str
    verbose: int

    @property
    def strategy(self):
        return self.distribution.strategy


def start_session(config, verbose: int | None = None) -> Session:
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    # First: multi-worker has to start its collective-ops server before any other TensorFlow op.
    distribution = make_strategy(config.strategy)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if config.batch_size < distribution.strategy.num_replicas_in_sync:
        raise TfunetError(f"--batch-size is the global batch; {config.batch_size} is less than the "
                          f"{distribution.strategy.num_replicas_in_sync} replicas")
    return Session(distribution, resolve_policy(config.mixed_precision), verbose)


def train(config, verbose: int | None = None) -> dict:
    """Train a U-Net as `config` says; return the best model's val/test metrics and timings.

    With `config.folds` (or a split file that holds folds) this is K-fold cross-validation:
    see `tfunet.crossval.cross_validate`.
    verbose: Keras's fit verbosity; by default a progress bar on a terminal and one line per
    epoch otherwise (a log file would fill up with the bar's redraws)."""
    from tfunet.crossval import cross_validate, wants_folds

    if wants_folds(config):
        return cross_validate(config, verbose)
    session = start_session(config, verbose)
    task, verbose = session.distribution.task, session.verbose
    user_config = config
    if not task.is_chief:  # only the chief writes into output-dir
        config = dataclasses.replace(config, output_dir=str(worker_output_dir(config.output_dir, task)))
        verbose = session.verbose = 0
    # A resumed run (its backup is there) adds its time to the killed processes'.
    clock = WallClock(config.log_dir / WALL_FILE, carry_on=bool(backed_up_epoch(backup_dir(config.log_dir))))
    keras.utils.set_random_seed(config.seed)
    splits = load_splits(config)
    results = train_split(config, splits, session, config.model_dir, config.log_dir,
                          resume_key=user_config.to_dict(),
                          callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: clock.save())])
    clock.save()
    results["train_seconds"] = round(clock.seconds(), 1)
    with dtype_policy(session.policy):  # so a float16 model gets back its loss-scale optimizer's variables
        best = keras.saving.load_model(results["best_model"])
    for name in ("val", "test"):
        if splits.split[name]:
            results[name] = score_split(best, splits, name, config)
    if not task.is_chief:
        shutil.rmtree(config.output_dir, ignore_errors=True)
    if verbose:
        print("tfunet-train: final metrics of the best model")
        print(json.dumps(results, indent=2))
    return results


def score_split(model: keras.Model, splits, name: str, config) -> dict:
    """The training metrics of `model` on one split, rounded for the results dict."""
    if not model.compiled:  # a U-Net saved out of a training wrapper (tfunet.training_model)
        model.compile(loss=make_loss(config),
                      metrics=training_metrics(config.threshold))
    ds = make_pipeline(splits.dataset(name), image_size=config.image_size, batch_size=config.batch_size)
    scores = model.evaluate(ds, return_dict=True, verbose=0)
    return {k: round(float(v), 4) for k, v in scores.items()}


def resolution_phases(config) -> list[tuple[int, int, int]]:
    """(image size, first epoch, end epoch) of each stage of training: one stage at image_size,
    or coarse_epochs at coarse_size first."""
    if not config.coarse_epochs:
        return [(config.image_size, 0, config.epochs)]
    return [(config.coarse_size, 0, config.coarse_epochs), (config.image_size, config.coarse_epochs, config.epochs)]


def build_training_model(config) -> keras.Model:
    """The model `fit` trains: the U-Net itself, or a wrapper that saves the U-Net when training
    adds deep supervision or changes resolution (tfunet.training_model)."""
    if config.deep_supervision or config.coarse_epochs:
        return TrainingUNet(unet_args(config), deep_supervision=config.deep_supervision)
    return build_from_config(config)


def training_data(config, splits, image_size: int, steps_per_epoch: int, session: Session,
                  tumour_slices: dict[str, int] | None = None):
    """(train dataset, val dataset or None, extra fit arguments) at one image size.
    tumour_slices: per training patient, its slices with tumour (for --foreground-sampling)."""
    fit_options = {}
    augment_fn = functools.partial(augment, params=config.augmentation) if config.augment else None
    if config.foreground_share:
        train_ds = make_oversampled_pipeline(splits.dataset("train"), image_size=image_size,
                                             batch_size=config.batch_size, foreground_share=config.foreground_share,
                                             seed=config.seed, augment=augment_fn, cache=config.cache_slices,
                                             patients=tumour_slices if config.foreground_sampling == "patient" else None)
        fit_options["steps_per_epoch"] = steps_per_epoch  # the stream is endless
    else:
        train_ds = make_pipeline(splits.dataset("train"), image_size=image_size, batch_size=config.batch_size,
                                 training=True, seed=config.seed, augment=augment_fn, cache=config.cache_slices)
    val_ds = make_pipeline(splits.dataset("val"), image_size=image_size, batch_size=config.batch_size,
                           cache=config.cache_slices) if splits.split["val"] else None
    train_ds = with_threads(train_ds, config.data_threads)
    val_ds = with_threads(val_ds, config.data_threads) if val_ds is not None else None
    if session.distribution.task.num_tasks > 1:
        train_ds = shard_by_data(train_ds)
        val_ds = shard_by_data(val_ds) if val_ds is not None else None
    return train_ds, val_ds, fit_options


def train_split(config, splits, session: Session, model_dir: Path, log_dir: Path, *, resume_key: dict,
                select: bool = True, extra_metadata: dict | None = None, callbacks: list | None = None,
                label: str = "") -> dict:
    """One `model.fit` on `splits` (train, monitored on val), writing into model_dir and log_dir.

    select: keep the epoch with the best validation pooled Dice (else the last epoch: the
        validation patients then only draw the curves, nothing is chosen on them).
    resume_key: the options a backup must have been made with to be resumed.
    Returns {"best_model": the kept model's path, "epochs": epochs run}."""
    model_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    verbose, policy, strategy = session.verbose, session.policy, session.strategy
    write_split(splits.split, log_dir / "split.json")
    num_train = splits.num_slices("train")
    steps_per_epoch = math.ceil(num_train / config.batch_size)
    tumour_slices = tumour_burden(splits.source, splits.split["train"], slices=True) if config.foreground_share else {}
    if config.foreground_share and not any(tumour_slices.values()):
        raise TfunetError("--foreground-share needs training slices with tumour; the training patients have none")
    phases = resolution_phases(config)
    if verbose:
        sizes = " then ".join(f"{size}x{size} to epoch {end}" for size, _, end in phases) if len(phases) > 1 \
            else f"{config.image_size}x{config.image_size}"
        print(f"tfunet-train: {label}{config.dataset}, {num_train} train / {splits.num_slices('val')} val / "
              f"{splits.num_slices('test')} test slices "
              f"({len(splits.split['train'])}/{len(splits.split['val'])}/{len(splits.split['test'])} patients), "
              f"{sizes}, {config.epochs} epochs of {steps_per_epoch} steps")
        print(f"tfunet-train: dtype policy {policy}, XLA {'on' if use_jit(config) else 'off'}, "
              f"strategy {session.distribution.name} with {strategy.num_replicas_in_sync} replica(s)")

    with dtype_policy(policy), strategy.scope():
        model = compile_model(build_training_model(config), config, steps_per_epoch)
    # "policy" is what ran; config.mixed_precision is what was asked for (e.g. "auto").
    metadata = make_metadata(config, splits.split, policy=policy,
                             selection="best validation epoch" if select else "last epoch",
                             **(extra_metadata or {}))
    # The resolved policy is compared too: `auto` may mean bfloat16 on one machine, float32 on another.
    resumed = prepare_resume(backup_dir(log_dir), {**resume_key, "policy": policy}, ignore=EXECUTION_ONLY,
                             defaults=TrainConfig().to_dict())
    if verbose and resumed:
        print(f"tfunet-train: resuming after epoch {resumed} from {backup_dir(log_dir)}")
    epochs_run = 0
    truncate = bool(resumed)  # a kill may have logged epochs past the backup; done once
    for number, (size, first, end) in enumerate(phases):
        if resumed >= end:
            continue  # a finished phase; its last epoch is in the backup
        # Each size selects its best epoch among its own: validation Dice at 128 and at 256
        # are not comparable, and the saved model is the serving size's.
        best_so_far = None
        if truncate:
            best = truncate_log(log_dir / "train_log.csv", resumed, MONITOR, from_epoch=first)
            best_so_far, truncate = (best if select else None), False
        train_ds, val_ds, fit_options = training_data(config, splits, size, steps_per_epoch, session, tumour_slices)
        last = number == len(phases) - 1
        # shuffle=False: the tf.data pipeline already shuffles, seeded (Keras would only warn).
        history = model.fit(train_ds, validation_data=val_ds, initial_epoch=first, epochs=end, shuffle=False,
                            validation_freq=validation_epochs(max(first, resumed), end, config.validate_every),
                            callbacks=make_callbacks(metadata, model_dir, log_dir, bool(resumed or first),
                                                     best_so_far, MONITOR if select else None, callbacks,
                                                     keep_backup=not last),
                            verbose=verbose, **fit_options)
        epochs_run += len(history.epoch)
        resumed = max(resumed, end)
    return {"best_model": str(model_dir / BEST_MODEL), "epochs": epochs_run}
