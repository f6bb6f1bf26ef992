"""Data: slice sources (synthetic, LGG), patient-level splits and the tf.data pipeline."""
