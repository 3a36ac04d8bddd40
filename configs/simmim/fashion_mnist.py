"""SimMIM pretraining on Fashion-MNIST: the CPU default, beside configs/mpp/.

The same backbone, data, augmentation (flip only) and optimiser as configs/mpp/fashion_mnist.py
(28x28 grey images repeated to 3 channels, 4x4 patches -> a 7x7 grid, width 64, depth 4).

Mask blocks: the paper's ViT-B masks 32x32-pixel blocks of its 16-pixel patches at 224 px
(microsoft/SimMIM configs/vit_base__800ep: MASK_PATCH_SIZE 32, a 7x7 grid of blocks of 2x2
patches). Scaled as the paper scales it, in patches: blocks of 2x2 patches, 8 px here. 28 is
not a multiple of 8, so the blocks form a 4x4 grid laid from the top-left corner and cut at the
edges (the last row and column of blocks hold 2 or 1 patches; simmim/objective.py), and
ceil(16 * 0.6) = 10 of the 16 are masked: each patch is masked with probability 10/16 = 0.625.
Blocks of 12 px would neither tile 28 nor leave more than 9 blocks; 4 px (one patch) is no
longer SimMIM's "larger than the patch". The ratio is the paper's 0.6.
"""
from configs.supervised import fashion_mnist as supervised_config
from simmim import objective


def get_config():
  config = supervised_config.get_config()  # The same backbone, data and optimiser as MPP's.
  config.model.num_classes = None  # SimMIM's decoder predicts pixels; no classifier head.
  config.simmim = objective.section()
  config.data.flip = True
  config.simmim.mask_ratio = 0.6
  config.simmim.mask_patch_size = 8
  config.simmim.eval_examples = 1024
  return config
