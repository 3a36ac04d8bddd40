"""Masked patch prediction on Fashion-MNIST as it is stored: one grey channel, 32 grey levels.

configs/mpp/fashion_mnist.py repeats the grey channel three times, so its 3-bit-per-channel
colour classes (512) collapse to the 8 on the grey diagonal. Here the model takes 1 channel and
`mpp.bits` = 5 bins it into 2**5 = 32 grey levels: the mean-colour target has 32 classes
(downsampled colour: 32 per cell). The backbone fine-tunes with
configs/finetune/fashion_mnist_grey.py.
"""
from configs.mpp import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.data.channels = 1
  config.mpp.bits = 5  # Per channel: (2**bits)**channels classes.
  return config
