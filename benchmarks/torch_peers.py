"""The PyTorch peers of benchmarks/train_step.py: timm's and Hugging Face's ViTs, eager.

On CPU they train in float32; on a GPU in bfloat16 autocast (float32 weights and AdamW state),
the usual mixed-precision recipe, to set beside our `model.dtype=bfloat16` step.

Each peer is built with the benchmark's shape and trained with the same recipe as our step
(AdamW, global-norm clipping at 1, no dropout), so images/s compare like for like.
"""
from __future__ import annotations

import sys
import time

from vit.testing.timm_import import import_timm


class TorchStep:
  """One peer model, its optimiser and a fixed random batch; `train(n)` / `infer(n)` time n
  steps."""

  def __init__(self, shape, step: str, framework: str, device: str = 'cpu'):
    import contextlib
    import torch
    torch.manual_seed(0)
    self.torch = torch
    self.device = torch.device('cuda' if device == 'gpu' else 'cpu')
    self.model, self.loss = _build(shape, step, framework)
    self.model.to(self.device)
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.1)
    b, s = shape.batch, shape.image
    self.images = torch.randn(b, shape.channels, s, s, device=self.device)
    self.labels = torch.randint(0, shape.classes, (b,), device=self.device)
    grid = s // shape.patch
    # SimMIM's block mask as ours draws it (simmim/objective.py); else MPP's corruption rate
    # (paper B.1.2). MAE's peer draws its own noise every step, as our step does.
    self.mask = (_block_mask(torch, b, grid).to(self.device) if step == 'simmim' else
                 torch.rand(b, grid * grid, device=self.device) < 0.5)
    self.autocast = (lambda: torch.autocast('cuda', dtype=torch.bfloat16)) if device == 'gpu' \
        else contextlib.nullcontext

  def _sync(self):
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize()

  def peak_device_bytes(self):
    if self.device.type != 'cuda':
      return None
    return self.torch.cuda.max_memory_allocated()

  def info(self) -> dict:
    versions = {'torch': self.torch.__version__}
    for name in ('timm', 'transformers'):
      if name in sys.modules:
        versions[name] = sys.modules[name].__version__
    return {'params': sum(p.numel() for p in self.model.parameters()), 'versions': versions,
            'threads': self.torch.get_num_threads()}

  def _train_step(self):
    self.model.train()
    with self.autocast():
      loss = self.loss(self.model, self.images, self.labels, self.mask)
    loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)
    return loss

  def train(self, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      self._train_step()
    self._sync()
    return time.perf_counter() - start

  def infer(self, n: int) -> float:
    self.model.eval()
    start = time.perf_counter()
    with self.torch.inference_mode(), self.autocast():
      for _ in range(n):
        self.loss(self.model, self.images, self.labels, self.mask, forward_only=True)
    self._sync()
    return time.perf_counter() - start


def _build(shape, step: str, framework: str):
  import torch.nn.functional as F
  if framework == 'timm':
    if step != 'supervised':
      raise ValueError('timm has no masked-image-modelling ViT head')
    vt = import_timm().models.vision_transformer
    model = vt.VisionTransformer(
        img_size=shape.image, patch_size=shape.patch, in_chans=shape.channels,
        embed_dim=shape.hidden, depth=shape.depth, num_heads=shape.heads,
        mlp_ratio=shape.mlp / shape.hidden, num_classes=shape.classes)

    def loss(model, images, labels, mask, forward_only=False):
      logits = model(images)
      return logits if forward_only else F.cross_entropy(logits, labels)
    return model, loss
  import transformers
  config = transformers.ViTConfig(
      image_size=shape.image, patch_size=shape.patch, num_channels=shape.channels,
      hidden_size=shape.hidden, num_hidden_layers=shape.depth,
      num_attention_heads=shape.heads, intermediate_size=shape.mlp,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=shape.classes,
      encoder_stride=shape.patch)
  if step == 'supervised':
    model = transformers.ViTForImageClassification(config)

    def loss(model, images, labels, mask, forward_only=False):
      logits = model(pixel_values=images).logits
      return logits if forward_only else F.cross_entropy(logits, labels)
    return model, loss
  if step == 'mae':
    # Our MAE's decoder and masking (configs/mae/fashion_mnist.py, vit.config defaults).
    from benchmarks.train_step import MAE_DECODER, MAE_MASK_RATIO
    model = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(
        image_size=shape.image, patch_size=shape.patch, num_channels=shape.channels,
        hidden_size=shape.hidden, num_hidden_layers=shape.depth,
        num_attention_heads=shape.heads, intermediate_size=shape.mlp,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        decoder_hidden_size=MAE_DECODER['hidden_size'],
        decoder_num_hidden_layers=MAE_DECODER['num_layers'],
        decoder_num_attention_heads=MAE_DECODER['num_heads'],
        decoder_intermediate_size=MAE_DECODER['mlp_dim'], mask_ratio=MAE_MASK_RATIO,
        norm_pix_loss=True))

    def loss(model, images, labels, mask, forward_only=False):
      out = model(pixel_values=images)
      return out.logits if forward_only else out.loss
    return model, loss
  # SimMIM's own peer, and the closest published peer of MPP: masked patches replaced by a
  # learned token, the masked pixels reconstructed (our MPP classifies mean colours, §4.6).
  model = transformers.ViTForMaskedImageModeling(config)

  def loss(model, images, labels, mask, forward_only=False):
    out = model(pixel_values=images, bool_masked_pos=mask)
    return out.reconstruction if forward_only else out.loss
  return model, loss


def _block_mask(torch, batch: int, grid: int, block: int = 2, ratio: float = 0.6):
  """bool [batch, grid * grid]: ceil(ratio * blocks) random blocks of block x block patches,
  laid from the top-left and cut at the edges (simmim/objective.py's defaults: 8-px blocks of
  4-px patches)."""
  import math
  side = -(-grid // block)
  count = math.ceil(side * side * ratio)
  ranks = torch.rand(batch, side * side).argsort(1).argsort(1)
  blocks = (ranks < count).reshape(batch, side, side)
  mask = blocks.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :grid, :grid]
  return mask.reshape(batch, grid * grid)
