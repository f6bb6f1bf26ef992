"""TensorFlow's process-wide settings, applied by the commands at start-up, and the XLA rule.

They are environment variables that TensorFlow reads once, when it is first imported, so they
must be set before that; `import tfunet` itself sets nothing. A Python user who wants the same
behaviour calls `tfunet.configure_tensorflow()` before importing TensorFlow (or sets the
variables in the shell). A value already in the environment always wins.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

NVIDIA_DRIVER = Path("/proc/driver/nvidia")


def tensorflow_settings(machine: str | None = None, nvidia_driver: bool | None = None) -> dict[str, str]:
    """The environment defaults tfunet's commands run TensorFlow with, for this machine.

    TF_CPP_MIN_LOG_LEVEL: 2 hides TensorFlow's C++ start-up notes; without an NVIDIA driver, 3,
    because a CPU-only machine otherwise logs an ERROR line on every run
    (`failed call to cuInit`) that level 2 does not hide. With a driver, level 2 keeps real
    GPU errors visible.
    TF_ENABLE_ONEDNN_OPTS=1 on x86: TensorFlow leaves its oneDNN kernels off on x86 CPUs without
    AVX-512 (e.g. AMD Zen 2/3), where they measured 2x faster for training and 1.5x for scoring
    (docs/performance.md).
    """
    machine = (machine or platform.machine()).lower()
    nvidia_driver = NVIDIA_DRIVER.exists() if nvidia_driver is None else nvidia_driver
    settings = {"TF_CPP_MIN_LOG_LEVEL": "2" if nvidia_driver else "3"}
    if machine in ("x86_64", "amd64"):
        settings["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return settings


def configure_tensorflow() -> bool:
    """Apply `tensorflow_settings()` where the environment does not set them already.

    Returns False (and changes nothing) when TensorFlow is already imported, since it would
    no longer read them."""
    if "tensorflow" in sys.modules:
        return False
    for key, value in tensorflow_settings().items():
        os.environ.setdefault(key, value)
    return True


def use_jit(config) -> bool:
    """The one XLA rule, for training and scoring alike: `auto` is on with a GPU and off on
    CPUs, where XLA measured slower than TensorFlow's oneDNN kernels (docs/performance.md)."""
    if config.jit_compile == "auto":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return config.jit_compile == "on"
