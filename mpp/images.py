"""Picture grids of what MPP sees and predicts: original / corrupted input / prediction.

The corrupted row paints [mask] patches red and shows replaced patches with the pixels of the
patch that replaced them; the prediction row fills every corrupted patch with the predicted
colour (bin centres; cells for the downsampled target; pixels for L2) and leaves the rest as is.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mpp import objective, targets as targets_lib
from vit import atomic_write
from vit.models import patches as patches_lib
from vit.preprocess import to_unit

MASK_COLOR = (1.0, 0.15, 0.15)


def _predicted_patches(spec: objective.Spec, outputs, true_patches):
  """Model outputs -> [B, N, ph, pw, C] in [0, 1]."""
  b, n, ph, pw, c = true_patches.shape
  if spec.target == 'pixels':
    pred = outputs.reshape(b, n, ph * pw * c)
    if spec.normalize_pixels:  # Undo the per-patch normalisation with the true patch's stats.
      flat = true_patches.reshape(b, n, -1)
      pred = pred * jnp.sqrt(flat.var(-1, keepdims=True) + 1e-6) + flat.mean(-1, keepdims=True)
    return jnp.clip(pred.reshape(b, n, ph, pw, c), 0.0, 1.0)
  colors = targets_lib.dequantize(jnp.argmax(outputs, -1), c, spec.bits)
  if spec.target == 'mean_color':
    return jnp.broadcast_to(colors[:, :, None, None, :], true_patches.shape)
  g = spec.grid
  cells = colors.reshape(b, n, g, 1, g, 1, c)
  cells = jnp.broadcast_to(cells, (b, n, g, ph // g, g, pw // g, c))
  return cells.reshape(b, n, ph, pw, c)


def patch_panels(model, spec: objective.Spec, params, images: jax.Array, rng: jax.Array):
  """uint8 [B, H, W, C] -> three float [B, N, ph, pw, 3] patch panels in [0, 1] (jittable)."""
  outputs, _, corruption = objective.forward(model, spec, params, images, rng, False)
  unit = to_unit(images)
  patches = patches_lib.patchify(unit, spec.patch_size)
  b, n = patches.shape[:2]
  flat = patches.reshape(b * n, *patches.shape[2:])
  shown = jnp.where(corruption.replaced[..., None, None, None],
                    flat[corruption.source.reshape(-1)].reshape(patches.shape), patches)
  if patches.shape[-1] == 1:
    patches, shown = (jnp.repeat(x, 3, -1) for x in (patches, shown))
  shown = jnp.where(corruption.masked[..., None, None, None], jnp.array(MASK_COLOR), shown)
  predicted = _predicted_patches(spec, outputs, patches_lib.patchify(unit, spec.patch_size))
  if predicted.shape[-1] == 1:
    predicted = jnp.repeat(predicted, 3, -1)
  predicted = jnp.where(corruption.corrupted[..., None, None, None], predicted, patches)
  return patches, shown, predicted


def make_panels(model, spec: objective.Spec, params, images, rng, panels_fn=None):
  """uint8 [B, H, W, C] -> three float [B, H, W, 3] image panels in [0, 1]."""
  panels_fn = panels_fn or (lambda *a: patch_panels(model, spec, *a))
  grid = (images.shape[1] // spec.patch_size[0], images.shape[2] // spec.patch_size[1])
  return tuple(patches_lib.unpatchify(np.asarray(x), grid) for x in panels_fn(params, images, rng))


def compose(panels, scale: int = 4, gap: int = 2) -> np.ndarray:
  """Rows of panels (each [B, H, W, 3] in [0, 1]) -> one uint8 [rows*, cols*, 3] picture."""
  b, h, w, _ = panels[0].shape
  hs, ws = h * scale + gap, w * scale + gap
  out = np.ones((len(panels) * hs + gap, b * ws + gap, 3), np.uint8) * 255
  for r, panel in enumerate(panels):
    big = np.repeat(np.repeat(panel, scale, axis=1), scale, axis=2)
    big = np.round(np.clip(big, 0.0, 1.0) * 255).astype(np.uint8)
    for i in range(b):
      out[gap + r * hs:gap + r * hs + h * scale, gap + i * ws:gap + i * ws + w * scale] = big[i]
  return out


class GridWriter:
  """The loop's periodic hook: a PNG under WORKDIR/images and the same picture in TensorBoard.
  The PNG is written whole or not at all (vit.atomic_write): a full disk is one line naming it,
  and leaves no cut-short picture."""

  def __init__(self, model, spec: objective.Spec, images: np.ndarray, workdir: str,
               seed: int = 0):
    self._images, self._dir = images, os.path.join(workdir, 'images')
    self._rng = jax.random.key(seed)
    self._panels_fn = jax.jit(lambda p, x, r: patch_panels(model, spec, p, x, r))
    self._model, self._spec = model, spec

  def __call__(self, state, step: int, writer) -> str:
    panels = make_panels(self._model, self._spec, state.params, jnp.asarray(self._images),
                         self._rng, self._panels_fn)
    picture = compose(panels)
    path = os.path.join(self._dir, f'mpp_{step:07d}.png')
    with atomic_write.file(path) as partial:  # Same extension: PIL picks PNG from it.
      Image.fromarray(picture).save(partial)
    writer.write_images(step, {'mpp/original_corrupted_predicted': picture[None]})
    return path
