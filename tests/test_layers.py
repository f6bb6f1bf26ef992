"""tfunet.layers.BatchNormalization (the fused one) against Keras's BatchNormalization, same weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfunet.layers import BatchNormalization as FusedBatchNormalization

SHAPE = (4, 8, 8, 5)
PIXELS = SHAPE[0] * SHAPE[1] * SHAPE[2]


def _run(cls, policy, x, axis=-1):
    """Output, input/weight gradients and moving statistics after one training call."""
    layer = cls(momentum=0.9, dtype=policy, axis=axis)
    layer.build(x.shape)
    channels = x.shape[axis]
    layer.gamma.assign(np.linspace(0.5, 1.5, channels))
    layer.beta.assign(np.linspace(-1.0, 1.0, channels))
    xt = tf.constant(x)
    # A loss that weights the pixels unevenly, so that no gradient is trivially zero.
    weights = (np.arange(x.size) % 7).reshape(x.shape).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
    grads = tape.gradient(loss, [xt, layer.gamma.value, layer.beta.value])
    return y, [np.asarray(g) for g in grads], layer


@pytest.mark.parametrize("policy, atol", [("float32", 1e-5), ("mixed_bfloat16", 0.05)])
def test_training_matches_keras_batch_norm(policy, atol):
    x = np.random.default_rng(0).normal(2.0, 3.0, SHAPE).astype(np.float32)
    y_keras, g_keras, keras_layer = _run(keras.layers.BatchNormalization, policy, x)
    y_fused, g_fused, fused_layer = _run(FusedBatchNormalization, policy, x)
    assert y_fused.dtype == y_keras.dtype == keras.mixed_precision.Policy(policy).compute_dtype
    np.testing.assert_allclose(np.asarray(tf.cast(y_fused, tf.float32)), np.asarray(tf.cast(y_keras, tf.float32)),
                               atol=atol)
    for fused, plain in zip(g_fused, g_keras):
        np.testing.assert_allclose(fused, plain, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(fused_layer.moving_mean.numpy(), keras_layer.moving_mean.numpy(), atol=1e-6)
    # The fused op updates with the unbiased batch variance: n/(n-1) times Keras's.
    batch_var_keras = (keras_layer.moving_variance.numpy() - 0.9) / 0.1
    batch_var_fused = (fused_layer.moving_variance.numpy() - 0.9) / 0.1
    np.testing.assert_allclose(batch_var_fused, batch_var_keras * PIXELS / (PIXELS - 1), rtol=1e-4)


@pytest.mark.parametrize("policy, atol", [("float32", 1e-5), ("mixed_bfloat16", 0.05)])
def test_inference_uses_the_moving_statistics(policy, atol):
    x = np.random.default_rng(1).normal(2.0, 3.0, SHAPE).astype(np.float32)
    layers = [cls(dtype=policy) for cls in (keras.layers.BatchNormalization, FusedBatchNormalization)]
    for layer in layers:
        layer.build(SHAPE)
        layer.moving_mean.assign(np.full(SHAPE[-1], 2.0))
        layer.moving_variance.assign(np.full(SHAPE[-1], 9.0))
    plain, fused = (np.asarray(tf.cast(layer(x, training=False), tf.float32)) for layer in layers)
    np.testing.assert_allclose(fused, plain, atol=atol)
    np.testing.assert_allclose(fused, (x - 2.0) / np.sqrt(9.0 + 1e-3), atol=atol)


def test_what_the_fused_op_cannot_do_takes_keras_path():
    # Channels first (axis 1) is not what the fused NHWC call handles: same result as Keras's layer.
    x = np.random.default_rng(2).normal(size=(4, 5, 8, 8)).astype(np.float32)
    y_keras, _, _ = _run(keras.layers.BatchNormalization, "float32", x, axis=1)
    y_fused, _, _ = _run(FusedBatchNormalization, "float32", x, axis=1)
    np.testing.assert_allclose(np.asarray(y_fused), np.asarray(y_keras), atol=1e-5)
