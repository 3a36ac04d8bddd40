"""Fine-tuning a 1-channel backbone (configs/mpp/fashion_mnist_grey.py) on grey Fashion-MNIST.

As configs/finetune/fashion_mnist.py with one input channel: the checkpoint's patch embedding
takes 1-channel patches, and a mismatch is a one-line config.data.channels error.
"""
from configs.finetune import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.data.channels = 1
  return config
