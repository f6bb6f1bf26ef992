"""tfunet: a Keras 3 / TensorFlow U-Net for brain-tumour segmentation in MRI.

For research only, not for clinical use. The public API is declared here.
"""

import importlib
import os
import platform

# TensorFlow's C++ start-up notes (CPU features, no GPU found) drown the progress bars; users
# who want them set TF_CPP_MIN_LOG_LEVEL themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow leaves its oneDNN CPU kernels off on x86 CPUs without AVX-512 (e.g. AMD Zen 2), where
# they measured 2x faster for training and 1.5x for scoring (README "Speed and scale"). Only
# effective if TensorFlow is not imported yet; an explicit TF_ENABLE_ONEDNN_OPTS wins.
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# Importing these registers tfunet's custom Keras objects, so that `keras.saving.load_model`
# reloads a tfunet `.keras` file without `custom_objects` once `tfunet` is imported.
from tfunet import losses as _losses  # noqa: F401
from tfunet import metrics as _metrics  # noqa: F401
from tfunet.version import __version__

_API = {
    "TrainConfig": "tfunet.config",
    "make_config": "tfunet.config",
    "TfunetError": "tfunet.errors",
    "build_unet": "tfunet.model",
    "BCEDiceLoss": "tfunet.losses",
    "SegmentationMetric": "tfunet.metrics",
    "all_scores": "tfunet.metrics",
    "read_metadata": "tfunet.metadata",
    "update_metadata": "tfunet.metadata",
    "write_metadata": "tfunet.metadata",
    "train": "tfunet.train",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tfunet' has no attribute {name!r}")
