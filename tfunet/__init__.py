"""tfunet: a Keras 3 / TensorFlow U-Net for brain-tumour segmentation in MRI.

For research only, not for clinical use. The public API is declared here. Importing tfunet
imports neither TensorFlow nor Keras and sets no environment variable: each name below loads
its module on first use, and the first TensorFlow-backed one applies the commands' TensorFlow
settings (tfunet.runtime) if TensorFlow is not imported yet. Importing a submodule directly
(`from tfunet.train import train`) does not: call `tfunet.configure_tensorflow()` first.
"""

import importlib

from tfunet.version import __version__

_API = {
    "TrainConfig": "tfunet.config",
    "make_config": "tfunet.config",
    "TfunetError": "tfunet.errors",
    "configure_tensorflow": "tfunet.runtime",
    "UNet": "tfunet.model",
    "build_unet": "tfunet.model",
    "BCEDiceLoss": "tfunet.losses",
    "SegmentationMetric": "tfunet.metrics",
    "all_scores": "tfunet.metrics",
    "load_model": "tfunet.loading",
    "load_predictor": "tfunet.predictor",
    "evaluate_model": "tfunet.evaluate",
    "read_metadata": "tfunet.metadata",
    "update_metadata": "tfunet.metadata",
    "write_metadata": "tfunet.metadata",
    "train": "tfunet.train",
    "cross_validate": "tfunet.crossval",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        if _API[name] not in ("tfunet.config", "tfunet.errors", "tfunet.runtime"):
            # First use of a TensorFlow-backed name: the commands' TensorFlow settings, if
            # TensorFlow is not imported yet (configure_tensorflow changes nothing otherwise).
            importlib.import_module("tfunet.runtime").configure_tensorflow()
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tfunet' has no attribute {name!r}")
