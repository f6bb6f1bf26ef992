import numpy as np
import pytest
import tensorflow as tf

from tfunet.data.augment import augment
from tfunet.data.pipeline import make_oversampled_pipeline, make_pipeline, resize_slice, with_threads
from tfunet.data.sources import load_splits
from tfunet.data.synthetic import SyntheticSource
from tfunet.errors import TfunetError


def _source():
    return SyntheticSource(num_patients=5, slices_per_patient=4, image_size=32, seed=0)


@pytest.mark.parametrize("image_size", [32, 16, 64])
def test_resize_keeps_uint8_image_and_binary_mask(image_size):
    element = next(iter(_source().dataset(["synth_000"])))
    out = resize_slice(element, image_size)
    assert out["image"].dtype == tf.uint8 and out["image"].shape == (image_size, image_size, 3)
    assert out["mask"].dtype == tf.uint8 and set(np.unique(out["mask"].numpy())) <= {0, 1}
    assert out["patient_id"] == element["patient_id"]


def test_fit_batches_are_float_pairs_and_metadata_batches_keep_ids():
    ds = _source().dataset(["synth_000", "synth_001"])
    x, y = next(iter(make_pipeline(ds, image_size=32, batch_size=3)))
    assert x.dtype == tf.float32 and x.shape == (3, 32, 32, 3) and float(tf.reduce_max(x)) > 1.0
    assert y.dtype == tf.float32 and y.shape == (3, 32, 32, 1)
    batch = next(iter(make_pipeline(ds, image_size=32, batch_size=3, with_metadata=True)))
    assert set(batch) == {"image", "mask", "patient_id", "slice"}
    assert batch["image"].dtype == tf.uint8


def test_training_shuffle_is_seeded_and_reshuffles_each_epoch():
    ds = _source().dataset(["synth_000", "synth_001", "synth_002"])

    def order(pipeline):
        return [tuple(b["slice"].numpy()) + tuple(b["patient_id"].numpy()) for b in pipeline]

    a = make_pipeline(ds, image_size=32, batch_size=4, training=True, seed=1, with_metadata=True)
    b = make_pipeline(ds, image_size=32, batch_size=4, training=True, seed=1, with_metadata=True)
    first, second = order(a), order(a)
    assert first == order(b)  # same seed, same order
    assert first != second  # a new order each epoch


class CountingSource:
    """A source whose dataset counts the slices read from it (how often the shards are read)."""

    def __init__(self):
        self.source, self.reads = _source(), tf.Variable(0, dtype=tf.int64)

    def dataset(self, ids):
        def count(element):
            self.reads.assign_add(1)
            return element

        return self.source.dataset(ids).map(count)


@pytest.mark.parametrize("oversampled", [False, True])
def test_cached_slices_are_read_once_and_train_the_same(oversampled):
    ids = ["synth_000", "synth_001", "synth_002"]
    counting = CountingSource()
    options = dict(image_size=32, batch_size=4, seed=1)
    if oversampled:
        make = lambda source, cache: make_oversampled_pipeline(source.dataset(ids), foreground_share=0.5,
                                                               cache=cache, **options).take(9)
    else:
        make = lambda source, cache: make_pipeline(source.dataset(ids), training=True, cache=cache, **options)
    cached, plain = make(counting, True), make(_source(), False)
    for epoch in range(3):
        for (x, y), (x_plain, y_plain) in zip(cached, plain):
            np.testing.assert_array_equal(x, x_plain)
            np.testing.assert_array_equal(y, y_plain)
    # Each stream reads the 12 slices once (the tumour stream filters them), never again.
    assert int(counting.reads.numpy()) == (24 if oversampled else 12)


@pytest.mark.parametrize("threads, pool", [(0, None), (1, 1), (2, 2)])
def test_data_threads_set_a_private_pool_and_keep_the_batches(threads, pool):
    ds = _source().dataset(["synth_000", "synth_001"])
    make = lambda: make_pipeline(ds, image_size=32, batch_size=4, training=True, seed=3, augment=augment)
    pooled = with_threads(make(), threads)
    assert pooled.options().threading.private_threadpool_size == pool
    for (x, y), (x_default, y_default) in zip(pooled, make()):
        np.testing.assert_array_equal(x, x_default)  # same seeded draws whatever the pool
        np.testing.assert_array_equal(y, y_default)


def test_split_by_patient_has_no_leak(tiny_config):
    splits = load_splits(tiny_config, source=_source())
    names = ("train", "val", "test")
    ids = {n: set(splits.split[n]) for n in names}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert set().union(*ids.values()) == set(_source().patients())
    for n in names:
        seen = {e["patient_id"].decode() for e in splits.dataset(n).as_numpy_iterator()}
        assert seen == ids[n]
    assert splits.num_slices("all") == 20


def test_split_file_with_unknown_patient_is_rejected(tiny_config, tmp_path):
    path = tmp_path / "split.json"
    path.write_text('{"train": ["synth_000"], "val": ["synth_001"], "test": ["nobody"]}')
    tiny_config.split_file = str(path)
    with pytest.raises(TfunetError, match="patient nobody in split 'test' is not in the dataset"):
        load_splits(tiny_config, source=_source())


@pytest.mark.parametrize("share, batch_size, drawn", [(0.33, 6, 2), (0.25, 8, 2), (1.0, 4, 4), (0.1, 5, 0)])
def test_oversampling_draws_its_foreground_share_in_every_batch(share, batch_size, drawn):
    ids = ["synth_000", "synth_001", "synth_002"]
    source = SyntheticSource(num_patients=3, slices_per_patient=8, image_size=32, seed=1)
    tumour = np.array([bool(e["mask"].numpy().any()) for e in source.dataset(ids)])
    assert 0 < tumour.sum() < len(tumour)  # both kinds of slices, or the test proves nothing
    if not drawn:
        with pytest.raises(ValueError, match="must draw between 1 and the whole batch"):
            make_oversampled_pipeline(source.dataset(ids), image_size=32, batch_size=batch_size,
                                      foreground_share=share)
        return
    ds = make_oversampled_pipeline(source.dataset(ids), image_size=32, batch_size=batch_size,
                                   foreground_share=share, seed=3, augment=None)
    for x, y in ds.take(3 * len(tumour)):  # several passes over both streams
        assert x.shape[0] == batch_size
        has_tumour = y.numpy().reshape(batch_size, -1).any(axis=1)
        assert has_tumour[:drawn].all()  # the foreground draws: exactly `drawn` per batch


def _patient(pid: str, tumour_slices: int, empty_slices: int, first_value: int) -> tf.data.Dataset:
    """A patient of 4x4 slices, each image one grey value (first_value, first_value + 1, ...) so
    a drawn slice names its patient; the first `tumour_slices` have tumour."""
    n = tumour_slices + empty_slices
    values = np.arange(first_value, first_value + n, dtype=np.uint8)
    masks = np.zeros((n, 4, 4, 1), np.uint8)
    masks[:tumour_slices, 1:3, 1:3] = 1
    return tf.data.Dataset.from_tensor_slices({
        "image": np.broadcast_to(values[:, None, None, None], (n, 4, 4, 3)).copy(), "mask": masks,
        "patient_id": [pid] * n, "slice": np.arange(n, dtype=np.int32)})


# Patient "large" has 12 tumour slices, "small" 2: drawn from all tumour slices, "small" gets
# 2/14 of the draws; drawn by patient first, half.
@pytest.mark.parametrize("by_patient, low, high", [(False, 0.05, 0.25), (True, 0.4, 0.6)])
def test_foreground_sampling_by_patient_evens_out_tumour_extent(by_patient, low, high):
    large, small = _patient("large", 12, 4, 0), _patient("small", 2, 4, 100)
    ds = make_oversampled_pipeline(large.concatenate(small), image_size=4, batch_size=4, foreground_share=0.5,
                                   seed=5, patients={"large": 12, "small": 2} if by_patient else None)
    draws = []
    for x, y in ds.take(200):
        assert y.numpy()[:2].any(axis=(1, 2, 3)).all()  # the share stays exact
        draws += [int(v) >= 100 for v in x.numpy()[:2, 0, 0, 0]]
    assert low <= np.mean(draws) <= high
