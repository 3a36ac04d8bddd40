"""Masked autoencoder pretraining on Fashion-MNIST: the CPU default, beside configs/mpp/.

The same backbone, data, augmentation (flip only) and optimiser as configs/mpp/fashion_mnist.py
(28x28 grey images repeated to 3 channels, 4x4 patches -> 49 tokens, width 64, depth 4), so the
three masked-image objectives differ only in what they mask and predict. The paper's masking:
75% of the patches removed (the encoder sees int(49 * 0.25) = 12), per-patch normalised pixel
targets. The decoder is the paper's "light" one scaled down: the official decoder is 512 wide
and 8 deep for every encoder (1/2 of ViT-L's width, 2/3 of ViT-B's; the paper's Table 1 finds
depth 1 enough for fine-tuning, depth 8 better for linear probes); here 32 wide (1/2), 2
blocks of 2 heads, MLP 128, so it costs half of one encoder block on all 50 tokens (the
encoder runs on 13). The paper leaves decoder size and learning rate open at this scale;
these are provisional until chosen on the held-out split (issue 27's study).
"""
from configs.supervised import fashion_mnist as supervised_config
from mae import objective


def get_config():
  config = supervised_config.get_config()  # The same backbone, data and optimiser as MPP's.
  config.model.num_classes = None  # MAE's decoder predicts pixels; no classifier head.
  config.mae = objective.section()
  config.data.flip = True
  config.mae.mask_ratio = 0.75
  config.mae.norm_pix_loss = True
  config.mae.decoder.hidden_size = 32
  config.mae.decoder.num_layers = 2
  config.mae.decoder.num_heads = 2
  config.mae.decoder.mlp_dim = 128
  config.mae.eval_examples = 1024
  return config
