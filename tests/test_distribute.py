import json
import os
import socket
import subprocess
import sys

import keras
import pytest

from tfunet.cli.train import main as train_main
from tfunet.distribute import (Task, cluster_task, patch_keras_for_multi_worker, read_tf_config,
                               resolve_strategy_name, worker_output_dir)
from tfunet.errors import TfunetError

TINY_ARGS = ["--image-size", "32", "--base-filters", "4", "--depth", "2", "--num-patients", "4",
             "--slices-per-patient", "4", "--epochs", "1", "--batch-size", "8"]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _cluster(workers=2, chief=False, task=("worker", 0)):
    cluster = {"worker": [f"127.0.0.1:{2000 + i}" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["127.0.0.1:1999"]
    return {"cluster": cluster, "task": {"type": task[0], "index": task[1]}}


@pytest.mark.parametrize("tf_config, expected", [
    (None, Task("worker", 0, 1, True)),
    (_cluster(2, task=("worker", 0)), Task("worker", 0, 2, True)),  # no chief: worker 0 is chief
    (_cluster(2, task=("worker", 1)), Task("worker", 1, 2, False)),
    (_cluster(2, chief=True, task=("chief", 0)), Task("chief", 0, 3, True)),
    (_cluster(2, chief=True, task=("worker", 0)), Task("worker", 0, 3, False)),
])
def test_cluster_task(tf_config, expected):
    assert cluster_task(tf_config) == expected


@pytest.mark.parametrize("choice, gpus, tf_config, expected", [
    ("auto", 0, None, "one-device"),
    ("auto", 1, None, "one-device"),
    ("auto", 4, None, "mirrored"),
    ("auto", 4, _cluster(2), "multi-worker"),
    ("auto", 0, _cluster(1), "one-device"),  # a one-task cluster is one machine
    ("mirrored", 0, None, "mirrored"),
    ("one-device", 8, _cluster(2), "one-device"),
])
def test_strategy_resolution(choice, gpus, tf_config, expected):
    assert resolve_strategy_name(choice, gpus, tf_config) == expected


@pytest.mark.parametrize("text, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"task": {}}', 'TF_CONFIG must be a JSON object with a "cluster" mapping'),
    ("[1, 2]", 'TF_CONFIG must be a JSON object with a "cluster" mapping'),
])
def test_bad_tf_config(text, message):
    with pytest.raises(TfunetError, match=message):
        read_tf_config({"TF_CONFIG": text})
    assert read_tf_config({}) is None


def test_multi_worker_without_tf_config_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert train_main(["--strategy", "multi-worker"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tfunet-train: error: --strategy multi-worker needs TF_CONFIG "
                   "(the cluster's JSON description)"]


def test_patch_refuses_untested_keras(monkeypatch):
    monkeypatch.setattr(keras, "__version__", "3.99.0")
    with pytest.raises(TfunetError, match="keras-team/keras#20585 tested with Keras 3.15.x; this is Keras 3.99.0"):
        patch_keras_for_multi_worker()


def test_only_the_chief_writes_into_output_dir(tmp_path):
    assert worker_output_dir(tmp_path, Task("worker", 0, 2, True)) == tmp_path
    other = worker_output_dir(tmp_path, Task("worker", 1, 2, False))
    assert tmp_path not in other.parents and other != tmp_path
    assert other == worker_output_dir(tmp_path, Task("worker", 1, 2, False))  # same on restart
    assert other != worker_output_dir(tmp_path / "elsewhere", Task("worker", 1, 2, False))


# Logical CPU devices have to be configured before TensorFlow initialises, hence a subprocess.
MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfunet.cli.train import main
assert main(sys.argv[1:] + ["--batch-size", "1"]) == 2  # fewer examples than replicas
sys.exit(main(sys.argv[1:]))
"""


def test_mirrored_over_two_logical_cpus(tmp_path):
    out = subprocess.run([sys.executable, "-c", MIRRORED, *TINY_ARGS, "--strategy", "mirrored",
                          "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "--batch-size is the global batch; 1 is less than the 2 replicas" in out.stderr
    assert "strategy mirrored with 2 replica(s)" in out.stdout
    assert (tmp_path / "saved_models" / "best_model.keras").is_file()
    assert "final metrics" in out.stdout


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_loopback_train_and_only_the_chief_writes(tmp_path):
    out_dir = tmp_path / "run"  # the folder both workers are told to use, as on a shared disk
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            ["tfunet-train", *TINY_ARGS, "--strategy", "multi-worker", "--output-dir", str(out_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**ENV, "TF_CONFIG": tf_config}))
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]
    chief_out = results[0][0]
    assert "strategy multi-worker with 2 replica(s)" in chief_out and "final metrics" in chief_out
    assert (out_dir / "saved_models" / "best_model.keras").is_file()
    assert (out_dir / "logs" / "train_log.csv").read_text().count("\n") == 2  # header + 1 epoch
    assert sorted(p.name for p in out_dir.iterdir()) == ["logs", "saved_models"]
    assert not worker_output_dir(out_dir, Task("worker", 1, 2, False)).exists()  # worker 1 cleaned up
