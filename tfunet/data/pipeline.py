"""The tf.data input pipeline: graph ops only, so it runs in parallel with training.

Images stay uint8 until they enter the model (4x less memory traffic than float32); the model
rescales them itself.
"""

from __future__ import annotations

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def resize_image(image, image_size: int):
    """uint8 pixels (H, W, C) or (N, H, W, C) -> float32 at image_size x image_size: bilinear,
    then rounded and clipped to uint8 values, so a resized slice holds what a uint8 file would.
    The one resize of training, evaluation and serving; at the model size it is the identity."""
    image = tf.image.resize(image, (image_size, image_size), method="bilinear")
    return tf.clip_by_value(tf.round(image), 0.0, 255.0)


def resize_slice(element: dict, image_size: int) -> dict:
    """Resize image (as `resize_image`, back to uint8) and mask (nearest, stays binary) to the
    model size."""
    image, mask = element["image"], element["mask"]
    if image.shape[0] != image_size or image.shape[1] != image_size:
        image = tf.cast(resize_image(image, image_size), tf.uint8)
        mask = tf.image.resize(mask, (image_size, image_size), method="nearest")
    return {**element, "image": image, "mask": mask}


def to_inputs_targets(batch: dict):
    """A batch of dict elements as the (x, y) pair `model.fit` expects."""
    return tf.cast(batch["image"], tf.float32), tf.cast(batch["mask"], tf.float32)


def make_pipeline(ds: tf.data.Dataset, *, image_size: int, batch_size: int, training: bool = False,
                  seed: int = 42, augment=None, with_metadata: bool = False,
                  cache: bool = False, shuffle_buffer: int = 2048) -> tf.data.Dataset:
    """Resize, optionally shuffle and augment, batch and prefetch a dataset of dict elements.

    training: shuffle with `seed` (reshuffled each epoch) and apply `augment`, a function
        (dataset, seed) -> dataset made of graph ops.
    with_metadata: keep dict batches (with patient_id and slice) instead of (x, y) pairs.
    cache: keep resized slices in memory after the first epoch, so later epochs neither read
        nor filter the dataset's shards again (augmentation still draws afresh each epoch).
    """
    ds = ds.map(lambda e: resize_slice(e, image_size), num_parallel_calls=AUTOTUNE,
                deterministic=True)
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if augment is not None:
            ds = augment(ds, seed)
    ds = ds.batch(batch_size, drop_remainder=False, num_parallel_calls=AUTOTUNE)
    if not with_metadata:
        ds = ds.map(to_inputs_targets, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def with_threads(ds: tf.data.Dataset, threads: int) -> tf.data.Dataset:
    """`ds` on a private pool of `threads` threads (0: unchanged). On few cores the input
    pipeline competes with the model's ops for them; a small pool caps its share."""
    if not threads:
        return ds
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    return ds.with_options(options)


def has_tumour(element: dict):
    return tf.reduce_any(element["mask"] > 0)


def even_by_patient(stream: tf.data.Dataset, counts: dict[str, int], seed: int) -> tf.data.Dataset:
    """`stream` (endless, of tumour slices) thinned so that each patient's slices come out equally
    often: a slice of a patient with n tumour slices is kept with probability fewest / n. The
    rejected slices cost a read of the cached stream, not an augmentation or a decode."""
    keys = sorted(p for p, n in counts.items() if n)
    fewest = min(counts[p] for p in keys)
    keep = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant([fewest / counts[p] for p in keys],
                                                                           tf.float32)),
        default_value=0.0)
    coins = tf.data.Dataset.random(seed=seed).map(lambda r: tf.cast(r % 1_000_000, tf.float32) / 1e6)
    return (tf.data.Dataset.zip((stream, coins))
            .filter(lambda element, coin: coin < keep.lookup(element["patient_id"]))
            .map(lambda element, coin: element))


def make_oversampled_pipeline(ds: tf.data.Dataset, *, image_size: int, batch_size: int,
                              foreground_share: float, seed: int = 42, augment=None,
                              cache: bool = False, shuffle_buffer: int = 2048,
                              patients: dict[str, int] | None = None) -> tf.data.Dataset:
    """An endless training stream in which round(foreground_share * batch_size) slices of every
    batch are drawn from the slices with tumour and the rest from all slices (nnU-Net draws a
    third of each batch from foreground). Two shuffled, augmented streams are batched apart and
    concatenated per batch, so the share is exact in every batch; `model.fit` then needs
    `steps_per_epoch`. Batches are (x, y) pairs, tumour slices first. cache: as `make_pipeline`.

    patients: the number of tumour slices of each training patient. The tumour draws are then
    spread evenly over the patients with tumour, as nnU-Net picks a case before its foreground;
    drawn from all tumour slices alike, a patient's share grows with its tumour's extent, so
    small tumours are seen least."""
    num_foreground = round(foreground_share * batch_size)
    if not 0 < num_foreground <= batch_size:
        raise ValueError(f"foreground share {foreground_share} of batch {batch_size} draws "
                         f"{num_foreground} slices; it must draw between 1 and the whole batch")

    def endless(source, offset, buffer):
        source = source.map(lambda e: resize_slice(e, image_size), num_parallel_calls=AUTOTUNE)
        if cache:
            source = source.cache()
        return source.repeat().shuffle(buffer, seed=seed + offset, reshuffle_each_iteration=True)

    def batched(source, count, offset):
        if augment is not None:
            source = augment(source, seed + offset)
        return source.batch(count, drop_remainder=True)

    foreground = endless(ds.filter(has_tumour), 0, shuffle_buffer)
    if patients:
        foreground = even_by_patient(foreground, patients, seed)
    parts = [batched(foreground, num_foreground, 0)]
    if num_foreground < batch_size:
        parts.append(batched(endless(ds, 1, shuffle_buffer), batch_size - num_foreground, 1))
    batches = tf.data.Dataset.zip(tuple(parts)).map(
        lambda *batches: {key: tf.concat([b[key] for b in batches], axis=0) for key in ("image", "mask")},
        num_parallel_calls=AUTOTUNE)
    return batches.map(to_inputs_targets, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
