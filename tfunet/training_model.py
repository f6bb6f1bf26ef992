"""The model `model.fit` trains when training differs from inference: deep supervision and a
resolution schedule.

`TrainingUNet` wraps a U-Net of unspecified input size, so the same weights train at 128x128
and then at 256x256 (the network is fully convolutional). With deep supervision it adds 1x1
heads on the decoder at 1/2 and 1/4 resolution, whose losses against the average-pooled mask
join the main loss during training only (nnU-Net's weights 1, 1/2, 1/4, normalised).
Validation loss and every metric see the main output alone, so the CSV columns mean what they
mean without it.

What is saved is never this wrapper: `inference_model()` is a plain `UNet` at the serving size
with the trained weights, so checkpoints, export and serving are unchanged.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from tfunet.config import AUX_LEVELS
from tfunet.model import UNet


def aux_weights(levels=AUX_LEVELS) -> list[float]:
    """Loss weights of the main output then each auxiliary head: 1/2**i, summing to 1."""
    raw = [0.5 ** i for i in range(len(levels) + 1)]
    return [w / sum(raw) for w in raw]


class TrainingUNet(keras.Model):
    """A U-Net for training: any input size, optional deep-supervision heads.

    unet_config: the `UNet` config of the model to save (its image_size is the serving size).
    """

    def __init__(self, unet_config: dict, deep_supervision: bool = False, **kwargs):
        super().__init__(name="training_unet", **kwargs)
        self.unet_config = dict(unet_config)
        self.deep_supervision = deep_supervision
        core = UNet(**{**self.unet_config, "image_size": None})
        policy = self.unet_config["policy"] = core.policy  # the saved model computes as this one did
        outputs = [core.output]
        if deep_supervision:
            for level in AUX_LEVELS:
                x = layers.Conv2D(1, 1, bias_initializer=keras.initializers.Constant(-3.9),
                                  name=f"aux{level}_head", dtype=policy)(core.get_layer(f"dec{level}_relu2").output)
                outputs.append(layers.Activation("linear", dtype="float32", name=f"aux{level}_logits")(x))
        self.network = keras.Model(core.input, outputs if deep_supervision else core.output, name="network")
        self.loss_weights_ds = aux_weights() if deep_supervision else [1.0]
        self.built = True  # its weights exist: the network above is built (BackupAndRestore needs it)

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not self.deep_supervision:
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        main = super().compute_loss(x, y, y_pred[0], sample_weight, training)
        if not training:  # validation loss is the main output's, comparable with any run
            return main
        total = self.loss_weights_ds[0] * main
        for level, weight, aux in zip(AUX_LEVELS, self.loss_weights_ds[1:], y_pred[1:]):
            target = ops.average_pool(ops.cast(y, "float32"), 2 ** level, 2 ** level)
            total = total + weight * self._compile_loss(target, aux)
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        main = y_pred[0] if self.deep_supervision else y_pred
        return super().compute_metrics(x, y, main, sample_weight)

    def inference_model(self) -> UNet:
        """The plain single-output U-Net at the serving size, holding the trained weights."""
        model = UNet(**self.unet_config)
        for layer in model.layers:
            if layer.weights:
                layer.set_weights(self.network.get_layer(layer.name).get_weights())
        return model
