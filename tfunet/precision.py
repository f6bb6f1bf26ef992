"""Mixed precision: which Keras dtype policy a run uses, chosen from the hardware.

`auto` picks the fastest policy that is safe on the devices TensorFlow sees:

    CUDA GPU with compute capability >= 7.0 (tensor cores)   mixed_float16
    other GPUs                                                float32
    CPU with AVX512-BF16 or AMX-BF16                          mixed_bfloat16
    other CPUs (e.g. AVX2-only, where bfloat16 is emulated)   float32

An explicit choice (off, bfloat16, float16) is obeyed on any device. The environment variable
`TFUNET_AUTO_PRECISION` (off, bfloat16 or float16) replaces what `auto` resolves to, e.g. to pin
a whole CI run or a cluster job to one policy whatever CPU it lands on; an explicit choice
still wins over it. Whatever the policy, the
model's last layer, the loss and the metrics compute in float32 (see tfunet.model,
tfunet.losses, tfunet.metrics), and float16 training gets dynamic loss scaling from
`Model.compile`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from tfunet.errors import TfunetError

POLICIES = {"off": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
MIN_FLOAT16_CAPABILITY = (7, 0)
AUTO_ENV = "TFUNET_AUTO_PRECISION"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags Linux reports; empty where /proc/cpuinfo does not exist."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def gpu_capabilities() -> list[tuple[int, int] | None]:
    """Compute capability of every visible GPU (None where TensorFlow does not report one)."""
    import tensorflow as tf

    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        cap = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        caps.append(tuple(cap) if cap else None)
    return caps


def auto_override() -> str | None:
    """The policy `TFUNET_AUTO_PRECISION` pins `auto` to, or None when it is unset or empty."""
    value = os.environ.get(AUTO_ENV, "").strip()
    if not value:
        return None
    if value not in POLICIES:
        raise TfunetError(f"{AUTO_ENV}={value!r} is not one of {', '.join(POLICIES)}")
    return POLICIES[value]


def resolve_policy(choice: str, gpus: list | None = None, flags: frozenset | None = None) -> str:
    """The Keras dtype policy name for a `--mixed-precision` choice.

    gpus: compute capabilities of the visible GPUs (queried when None).
    flags: CPU feature flags (read from /proc/cpuinfo when None); only used without GPUs.
    `TFUNET_AUTO_PRECISION` applies to `auto` only when both are None (probing this machine),
    so a call that describes its hardware stays independent of the environment.
    """
    if choice in POLICIES:
        return POLICIES[choice]
    if choice != "auto":
        raise TfunetError(f"unknown mixed-precision choice {choice!r}; choose auto, {', '.join(POLICIES)}")
    if gpus is None and flags is None:
        pinned = auto_override()
        if pinned:
            return pinned
    gpus = gpu_capabilities() if gpus is None else gpus
    if gpus:
        fast = all(cap is not None and tuple(cap) >= MIN_FLOAT16_CAPABILITY for cap in gpus)
        return POLICIES["float16"] if fast else POLICIES["off"]
    flags = cpu_flags() if flags is None else flags
    return POLICIES["bfloat16"] if BF16_CPU_FLAGS & set(flags) else POLICIES["off"]


@contextlib.contextmanager
def dtype_policy(name: str):
    """Set Keras's global dtype policy for the models built inside; restore it afterwards so one
    run's choice never leaks into the next model built in the same process."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield name
    finally:
        keras.mixed_precision.set_global_policy(previous)
