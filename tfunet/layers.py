"""Batch normalization as one fused TensorFlow op: the U-Net's opt-in normalization layer.

Keras 3's `BatchNormalization` casts bfloat16 activations to float32, computes the moments and
the normalization as separate element-wise ops, and casts back: several passes over every
activation map, forwards and backwards. TensorFlow's `FusedBatchNormV3` does it in one op per
direction (oneDNN's kernel on x86), reading bfloat16 and accumulating in float32. On 2 cores of a
bfloat16-capable AMD EPYC a training step of the 256×256 U-Net ran 1.46× faster at base 16 and
1.33× at base 32, 1.34× in float32 (docs/performance.md, `scripts/bench_step.py`).

The layer is a `BatchNormalization` with the same weights and config, and it keeps the class name
because Keras files its weights under the class name: `.keras` files, weight files and training
backups move between the two layers in both directions. One difference: the moving variance is
updated with the unbiased batch variance (n/(n-1), n = batch × height × width: 4,096 at the
bottleneck of a 256×256 batch of 16), as Keras 2's fused layer did.
"""

from __future__ import annotations

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="tfunet")
class BatchNormalization(layers.BatchNormalization):
    """`BatchNormalization` over the channels of NHWC maps, through `tf.raw_ops.FusedBatchNormV3`.

    Anything else (another axis or rank, a mask, renorm, synchronized statistics, another
    backend) takes Keras's own path.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow" and mask is None and len(inputs.shape) == 4
                and self.axis in (-1, 3) and self.scale and self.center and not self.renorm
                and not self.synchronized)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = tf.cast(inputs, self.compute_dtype)
        if training and self.trainable:
            empty = tf.constant([], tf.float32)
            y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=self.gamma, offset=self.beta, mean=empty, variance=empty,
                epsilon=self.epsilon, data_format="NHWC", is_training=True)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum
                                        + variance * (1.0 - self.momentum))
            return y
        y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=self.gamma, offset=self.beta, mean=self.moving_mean,
            variance=self.moving_variance, epsilon=self.epsilon, data_format="NHWC", is_training=False)
        return y
