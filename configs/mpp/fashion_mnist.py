"""Masked patch prediction on Fashion-MNIST: the CPU default (a few minutes on 2 cores).

The same small ViT as configs/supervised/fashion_mnist.py (28x28, 4x4 patches -> 49 tokens,
width 64, depth 4), so its backbone fine-tunes with configs/finetune/fashion_mnist.py. Images
are repeated to 3 channels like the supervised default: the 512 mean-colour classes reduce to
the 8 grey ones, which the model learns quickly. The paper's augmentation for MPP is the
classification one (Inception crop and flip); at 28 pixels a crop down to 5% of the area
leaves little of the garment, so only the flip is kept here.
"""
from configs.supervised import fashion_mnist as supervised_config
from mpp import objective


def get_config():
  config = supervised_config.get_config()  # The same backbone, data and optimiser.
  config.model.num_classes = None  # MPP has its own head on every patch token.
  config.mpp = objective.section()
  config.data.flip = True
  config.mpp.target = 'mean_color'
  config.mpp.corruption_rate = 0.5
  config.mpp.image_every = 200
  config.mpp.eval_examples = 1024
  return config
