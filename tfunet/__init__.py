"""tfunet: a Keras 3 / TensorFlow U-Net for brain-tumour segmentation in MRI.

For research only, not for clinical use. The public API is declared here. Importing tfunet
imports neither TensorFlow nor Keras and sets no environment variable: each name below loads
its module on first use (see tfunet.runtime for the TensorFlow settings the commands apply).
"""

import importlib

from tfunet.version import __version__

_API = {
    "TrainConfig": "tfunet.config",
    "make_config": "tfunet.config",
    "TfunetError": "tfunet.errors",
    "configure_tensorflow": "tfunet.runtime",
    "build_unet": "tfunet.model",
    "BCEDiceLoss": "tfunet.losses",
    "SegmentationMetric": "tfunet.metrics",
    "all_scores": "tfunet.metrics",
    "load_model": "tfunet.loading",
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
