"""tf.distribute for tfunet-train: one device, every local GPU, or several machines.

    one-device    TensorFlow's default placement: the first GPU, else the CPU.
    mirrored      synchronous data parallelism over every visible GPU (over the logical CPU
                  devices when there is no GPU and more than one was configured, as in tests).
    multi-worker  MultiWorkerMirroredStrategy over the machines that TF_CONFIG lists.
    auto          multi-worker when TF_CONFIG names more than one task, mirrored with more than
                  one GPU, else one-device.

`--batch-size` is always the global batch: Keras splits each batch across the replicas, so a
command gives the same optimisation (steps per epoch, learning rate) on any number of devices.

Keras 3.15's `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585).
`patch_keras_for_multi_worker` fixes the two functions at fault for the Keras versions it was
tested with; tests/test_distribute.py trains two workers on loopback to prove it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

from tfunet.errors import TfunetError

# Keras versions the multi-worker patch was written for and tested with (setup.cfg pins 3.15.1).
PATCHED_KERAS = ("3.15.",)


@dataclasses.dataclass(frozen=True)
class Task:
    """This process's place in a cluster."""

    type: str = "worker"
    index: int = 0
    num_tasks: int = 1
    is_chief: bool = True


def read_tf_config(environ=None) -> dict | None:
    """TF_CONFIG as a dict, or None when unset; a clear error when it is not valid JSON."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TfunetError(f"TF_CONFIG is not valid JSON: {exc}") from None
    if not isinstance(tf_config, dict) or not isinstance(tf_config.get("cluster"), dict):
        raise TfunetError('TF_CONFIG must be a JSON object with a "cluster" mapping')
    return tf_config


def cluster_task(tf_config: dict | None) -> Task:
    """Which task this is; the chief is task "chief", or worker 0 when the cluster has none."""
    if not tf_config:
        return Task()
    cluster = tf_config["cluster"]
    task = tf_config.get("task") or {}
    task_type, index = task.get("type", "worker"), int(task.get("index", 0))
    num_tasks = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
    is_chief = task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in cluster)
    return Task(task_type, index, num_tasks, is_chief)


def resolve_strategy_name(choice: str, num_gpus: int, tf_config: dict | None) -> str:
    """The strategy `auto` means on this machine; an explicit choice is kept."""
    if choice != "auto":
        return choice
    if cluster_task(tf_config).num_tasks > 1:
        return "multi-worker"
    return "mirrored" if num_gpus > 1 else "one-device"


@dataclasses.dataclass(frozen=True)
class Distribution:
    name: str  # one-device, mirrored or multi-worker
    strategy: object  # a tf.distribute.Strategy
    task: Task


def make_strategy(choice: str) -> Distribution:
    """The tf.distribute strategy for `--strategy`, and this process's task.

    Call it before any other TensorFlow op: MultiWorkerMirroredStrategy has to start its
    collective-ops server before the runtime is initialised.
    """
    import tensorflow as tf

    tf_config = read_tf_config()
    name = resolve_strategy_name(choice, len(tf.config.list_physical_devices("GPU")), tf_config)
    if name == "multi-worker":
        if tf_config is None:
            raise TfunetError("--strategy multi-worker needs TF_CONFIG (the cluster's JSON description)")
        patch_keras_for_multi_worker()
        return Distribution(name, tf.distribute.MultiWorkerMirroredStrategy(), cluster_task(tf_config))
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return Distribution(name, tf.distribute.MirroredStrategy([d.name for d in devices]), Task())
    return Distribution(name, tf.distribute.get_strategy(), Task())


def shard_by_data(ds):
    """Shard a dataset across workers by element, not by file: file-based sharding would give
    the workers different numbers of batches, and synchronous training would hang."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def worker_output_dir(output_dir: str | Path, task: Task) -> Path:
    """Where this task writes: the real folder for the chief, a private temporary folder for the
    other workers (the same one on a restart, so their backups resume too)."""
    if task.is_chief:
        return Path(output_dir)
    digest = hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"tfunet-{task.type}{task.index}-{digest}"


def patch_keras_for_multi_worker() -> None:
    """Make `model.fit` work under MultiWorkerMirroredStrategy in Keras 3.15 (keras#20585).

    Two functions of keras.src.backend.tensorflow.trainer fail in multi-worker mode:
      * `TensorFlowTrainer._maybe_symbolic_build` hands a PerReplica batch to a symbolic build
        that wants tensors; the patch builds from this worker's local batch instead.
      * `reduce_per_replica` reduces scalar logs with `axis=0`, which a scalar does not have;
        the patch reduces scalars with `axis=None` (a cross-worker mean, as intended).
    Everything else is delegated to the originals. Other Keras versions are refused, because the
    patch reaches into Keras internals that may have changed.
    """
    import keras
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if not keras.__version__.startswith(PATCHED_KERAS):
        raise TfunetError(
            f"--strategy multi-worker relies on a patch for keras-team/keras#20585 tested with Keras "
            f"{', '.join(v + 'x' for v in PATCHED_KERAS)}; this is Keras {keras.__version__}")
    trainer = tf_trainer.TensorFlowTrainer
    if getattr(trainer, "_tfunet_multi_worker_patch", False):
        return
    original_build = trainer._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica

    def multi_worker(strategy) -> bool:
        return tf_trainer._collective_all_reduce_multi_worker(strategy)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is None or not multi_worker(self.distribute_strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            local = self.distribute_strategy.experimental_local_results
            data_batch = tree.map_structure(
                lambda x: local(x)[0] if isinstance(x, tf.distribute.DistributedValues) else x, batch)
            break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if multi_worker(strategy) and reduction in ("auto", "mean"):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=0 if v.shape.rank else None), values)
        return original_reduce(values, strategy, reduction)

    trainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    trainer._tfunet_multi_worker_patch = True
