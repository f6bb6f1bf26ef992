"""The one configuration every tfunet command reads.

Defaults depend on the dataset: the synthetic default is sized to train in minutes on two CPU
cores, while `lgg` reproduces the PyTorch original's recipe (256x256, base 32, depth 4,
batch 16, 130 epochs, AdamW 1e-3 with weight decay 1e-5 and cosine decay). Values are
resolved in this order, later wins: dataset preset, recipe (`--recipe`), config file (YAML or
JSON), flags.
This module imports no TensorFlow, so argument errors are reported instantly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tfunet.errors import TfunetError

DATASETS = ("synthetic", "lgg")
UPSAMPLING = ("transpose", "bilinear")
JIT_COMPILE = ("auto", "on", "off")
AUGMENTATIONS = ("basic", "nnunet")  # tfunet.data.augment.PRESETS
FOREGROUND_SAMPLING = ("slice", "patient")  # tfunet.data.pipeline.make_oversampled_pipeline
MIXED_PRECISION = ("auto", "off", "bfloat16", "float16")
STRATEGIES = ("auto", "one-device", "mirrored", "multi-worker")
AUX_LEVELS = (1, 2)  # decoder levels with a deep-supervision head: 1/2 and 1/4 resolution
CHOICES = {"augmentation": AUGMENTATIONS, "foreground_sampling": FOREGROUND_SAMPLING, "jit_compile": JIT_COMPILE,
           "mixed_precision": MIXED_PRECISION, "strategy": STRATEGIES}


def check_unet_args(image_size: int, depth: int, base_filters: int, upsampling: str,
                    dropout: float) -> None:
    """The U-Net's argument check, shared by `tfunet.model.UNet` and `TrainConfig.validate`.
    image_size None: any input size (a network that trains at several sizes)."""
    for name, value in (("image-size", image_size), ("depth", depth), ("base-filters", base_filters)):
        if value is not None and value < 1:
            raise TfunetError(f"{name} must be at least 1, got {value}")
    if image_size is not None and image_size % (2 ** depth):
        raise TfunetError(
            f"image-size {image_size} is not divisible by 2**depth = {2 ** depth} "
            f"(depth {depth}); pick a multiple of {2 ** depth}")
    if upsampling not in UPSAMPLING:
        raise TfunetError(f"unknown upsampling {upsampling!r}; choose one of {', '.join(UPSAMPLING)}")
    if not 0.0 <= dropout < 1.0:
        raise TfunetError(f"dropout must be in [0, 1), got {dropout}")


@dataclasses.dataclass
class TrainConfig:
    # data
    dataset: str = "synthetic"
    data_dir: str | None = None
    cache_dir: str | None = None
    split_file: str | None = None
    num_patients: int = 24  # synthetic only
    slices_per_patient: int = 20  # synthetic only
    skip_bad: bool = False  # lgg: warn about and skip unreadable/invalid files instead of failing
    augment: bool = True  # random flips, rotations, scaling, intensity jitter on training slices
    augmentation: str = "basic"  # which set: basic (the original's, plus mild jitter) or nnunet
    foreground_share: float = 0.0  # share of every training batch drawn from slices with tumour (0: none)
    foreground_sampling: str = "slice"  # those draws: any tumour slice, or a patient first (nnU-Net's way)
    recipe: str = ""  # a named set of defaults (RECIPES) applied over the dataset preset; "" = the preset
    # model
    image_size: int = 256
    base_filters: int = 32
    depth: int = 4
    batch_norm: bool = True
    dropout: float = 0.0
    upsampling: str = "transpose"
    deep_supervision: bool = False  # auxiliary losses at 1/2 and 1/4 resolution while training
    # optimisation
    epochs: int = 130
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_epochs: int = 0
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    dice_per_slice: bool = False  # soft Dice per slice, averaged (default: pooled over the batch)
    threshold: float = 0.5
    seed: int = 42
    # resolution schedule: the first coarse_epochs train at coarse_size, the rest at image_size
    coarse_size: int = 0
    coarse_epochs: int = 0
    fine_lr: float = 0.0  # > 0: the full-size epochs restart the cosine at this peak (0: one cosine)
    # cross-validation: 0 = one train/val/test run; K >= 2 = K-fold cross-validation by patient
    folds: int = 0
    # execution
    jit_compile: str = "auto"  # auto: XLA on GPUs, off on CPUs
    mixed_precision: str = "auto"  # auto, off, bfloat16, float16
    strategy: str = "auto"  # auto, one-device, mirrored, multi-worker
    deterministic: bool = False  # op determinism for exact reruns
    cache_slices: bool = True  # keep the resized training and validation slices in memory after epoch 1
    steps_per_execution: int = 1  # training steps per call into the graph (Keras compile)
    data_threads: int = 0  # a thread pool of this size for the input pipelines; 0: tf.data's default
    validate_every: int = 1  # validate every k-th epoch (and always the first and last of each fit)
    fused_batch_norm: bool = False  # batch norm as one TensorFlow op (tfunet.layers); same weights and math
    # outputs: saved_models/ and logs/ are created under this folder
    output_dir: str = "."

    @property
    def model_dir(self) -> Path:
        return Path(self.output_dir) / "saved_models"

    @property
    def log_dir(self) -> Path:
        return Path(self.output_dir) / "logs"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "TrainConfig":
        check_known("dataset", self.dataset, DATASETS)
        for name in ("epochs", "batch_size", "num_patients", "slices_per_patient", "steps_per_execution",
                     "validate_every"):
            if getattr(self, name) < 1:
                raise TfunetError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        check_unet_args(self.image_size, self.depth, self.base_filters, self.upsampling, self.dropout)
        if not 0.0 < self.threshold < 1.0:
            raise TfunetError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise TfunetError("lr must be positive and weight-decay, warmup-epochs non-negative")
        if self.foreground_share and not 1 <= round(self.foreground_share * self.batch_size) <= self.batch_size:
            raise TfunetError(f"foreground-share must be 0 or draw 1 to {self.batch_size} slices of a batch "
                              f"of {self.batch_size}, got {self.foreground_share}")
        if self.data_threads < 0:
            raise TfunetError(f"data-threads must be 0 (tf.data's default) or more, got {self.data_threads}")
        if self.folds < 0 or self.folds == 1:
            raise TfunetError(f"folds must be 0 (no cross-validation) or at least 2, got {self.folds}")
        if self.folds and self.strategy == "multi-worker":
            raise TfunetError("--folds runs its folds one after another on one machine; "
                              "drop --strategy multi-worker")
        if bool(self.coarse_size) != bool(self.coarse_epochs):
            raise TfunetError("--coarse-size and --coarse-epochs go together (both 0: no resolution schedule)")
        if self.coarse_epochs:
            check_unet_args(self.coarse_size, self.depth, self.base_filters, self.upsampling, self.dropout)
            if not 0 < self.coarse_epochs < self.epochs:
                raise TfunetError(f"coarse-epochs must be between 1 and epochs - 1 ({self.epochs - 1}), "
                                  f"got {self.coarse_epochs}")
        if self.fine_lr < 0 or (self.fine_lr and not self.coarse_epochs):
            raise TfunetError(f"--fine-lr restarts the learning rate where a resolution schedule moves to "
                              f"--image-size: it needs --coarse-size and --coarse-epochs, and must be "
                              f"positive, got {self.fine_lr}")
        if self.fine_lr and self.warmup_epochs >= self.coarse_epochs:
            raise TfunetError(f"with --fine-lr the warm-up belongs to the coarse stage: warmup-epochs "
                              f"({self.warmup_epochs}) must be less than coarse-epochs ({self.coarse_epochs})")
        if self.deep_supervision and self.depth < 1 + max(AUX_LEVELS):
            raise TfunetError(f"--deep-supervision needs depth {1 + max(AUX_LEVELS)} or more "
                              f"(heads at 1/2 and 1/4 resolution), got depth {self.depth}")
        if self.recipe:
            check_known("recipe", self.recipe, RECIPES)
        if self.warmup_epochs >= self.epochs:
            raise TfunetError(f"warmup-epochs ({self.warmup_epochs}) must be less than epochs ({self.epochs})")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise TfunetError(f"{name.replace('_', '-')} must be one of {', '.join(choices)}, "
                                  f"got {getattr(self, name)!r}")
        if self.foreground_sampling != "slice" and not self.foreground_share:
            # Without a share there are no tumour draws to spread, and the flag would do nothing.
            raise TfunetError(f"--foreground-sampling {self.foreground_sampling} spreads oversampling's "
                              "tumour draws; set --foreground-share too (e.g. 0.33)")
        if self.mixed_precision == "auto":
            from tfunet.precision import auto_override

            auto_override()  # a bad TFUNET_AUTO_PRECISION fails here, before any work
        if self.dataset != "synthetic" and not self.data_dir:
            raise TfunetError(f"--data-dir is required for dataset {self.dataset!r}")
        if self.data_dir and not Path(self.data_dir).exists():
            raise TfunetError(f"data folder not found: {self.data_dir}")
        return self


# The synthetic default is small on purpose: 24 pseudo-patients of 20 slices at 128x128 with a
# base-16 U-Net reach pooled validation Dice >= 0.80 within about 5 minutes on two CPU cores
# (scripts/check_default_run.py measures it).
PRESETS: dict[str, dict[str, Any]] = {
    "synthetic": dict(image_size=128, base_filters=16, depth=4, epochs=8, batch_size=16,
                      augment=False),
    "lgg": dict(image_size=256, base_filters=32, depth=4, epochs=130, batch_size=16, augment=True),
}

# Recipes: named settings over the dataset preset (flags and config files still override them).
# "original" is the lgg preset itself, the PyTorch original's recipe, kept reproducible. "fast"
# is tuned for accuracy per CPU-hour: it trains within the wall time of 10 epochs of the
# original recipe at base 16 (scripts/recipe_budget.py measures both; docs/training.md has
# the cross-validated evidence).
RECIPES: dict[str, dict[str, Any]] = {
    "original": {},
    "fast": dict(image_size=128, base_filters=16, epochs=32, foreground_share=0.33),
}

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

# How a run executes, not what it learns: a backup made with other values of these still resumes.
EXECUTION_ONLY = ("cache_slices", "steps_per_execution", "data_threads", "validate_every", "fused_batch_norm")


def check_known(kind: str, name: str, names) -> str:
    """`name` if it is one of `names`, else the one-line error listing them."""
    if name not in names:
        raise TfunetError(f"unknown {kind} {name!r}; choose one of {', '.join(names)}")
    return name


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file; keys are field names (dashes or underscores)."""
    path = Path(path)
    if not path.is_file():
        raise TfunetError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except Exception as exc:  # parser errors are many-lined; keep the first line
        raise TfunetError(f"cannot parse config file {path}: {str(exc).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise TfunetError(f"config file {path} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def _coerce(name: str, value: Any) -> Any:
    default = getattr(TrainConfig, name, None)
    kind = type(default) if default is not None else str
    if value is None or isinstance(value, kind):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise TfunetError(f"option {name.replace('_', '-')} expects {kind.__name__}, got {value!r}")


def make_config(overrides: dict[str, Any] | None = None, config_file: str | Path | None = None,
                validate: bool = True) -> TrainConfig:
    """Resolve a `TrainConfig`: dataset preset, recipe, then the config file, then `overrides`.

    `overrides` entries that are None are treated as "not given", so argparse namespaces can be
    passed straight in.
    """
    given = dict(read_config_file(config_file)) if config_file else {}
    given.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise TfunetError(f"unknown option(s): {', '.join(u.replace('_', '-') for u in unknown)}")
    # Checked here as well as in validate(): the names pick the defaults, even with validate=False.
    dataset = check_known("dataset", given.get("dataset", TrainConfig.dataset), PRESETS)
    recipe = given.get("recipe") or ""
    values = {**PRESETS[dataset], **(RECIPES[check_known("recipe", recipe, RECIPES)] if recipe else {})}
    values.update({k: _coerce(k, v) for k, v in given.items()})
    config = TrainConfig(**values)
    return config.validate() if validate else config
