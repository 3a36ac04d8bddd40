"""The §4.5 figures as PNGs. matplotlib runs headless (Agg): no display is needed."""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

_DPI = 100


def _save(fig, path: str) -> None:
  try:  # Into vit.inspect.report's staging folder, which makes the set whole or leaves it be.
    fig.savefig(path, dpi=_DPI, bbox_inches='tight')
  finally:
    plt.close(fig)


def tile(maps: np.ndarray, gap: int = 1, fill: float = np.nan) -> np.ndarray:
  """[rows, cols, h, w(, c)] -> one image with `gap` pixels of `fill` between the tiles."""
  rows, cols, h, w = maps.shape[:4]
  out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *maps.shape[4:]), fill)
  for i in range(rows):
    for j in range(cols):
      out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = maps[i, j]
  return out


def attention_distance(distances: np.ndarray, image_size: int, path: str) -> None:
  """Figure 7 (right): one dot per head, mean attention distance against depth."""
  layers, heads = distances.shape
  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  depth = np.repeat(np.arange(1, layers + 1), heads)
  ax.scatter(depth, distances.ravel(), s=12, c=np.tile(np.arange(heads), layers),
             cmap='tab20', alpha=0.8)
  ax.set(xlabel='network depth (block)', ylabel='mean attention distance (pixels)',
         ylim=(0, image_size), xticks=np.arange(1, layers + 1))
  ax.grid(alpha=0.3)
  _save(fig, path)


def _show(image: np.ndarray) -> np.ndarray:
  return image[..., 0] if image.shape[-1] == 1 else image


def attention_rollout(images: np.ndarray, maps: np.ndarray, path: str,
                      titles: Optional[Sequence[str]] = None, columns: int = 8) -> None:
  """Figures 6 and 14: each image above the image weighted by its attention map.

  images [n, S, S, C] uint8, maps [n, gh, gw]; at most `columns` images per row of the
  figure, so --show 64 is 8 rows of 8, not one strip 8,000 pixels wide."""
  n, size = len(images), images.shape[1]
  cols = min(n, columns)
  rows = -(-n // cols)
  fig, axes = plt.subplots(2 * rows, cols, figsize=(1.3 * cols, 2.8 * rows), squeeze=False)
  for i in range(n):
    top, bottom = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
    m = np.asarray(maps[i], np.float64)
    m = (m - m.min()) / max(m.max() - m.min(), 1e-12)
    # Nearest-neighbour upsampling: each patch keeps its own value, as the model sees it.
    m = np.kron(m, np.ones((size // m.shape[0], size // m.shape[1])))
    masked = images[i].astype(np.float64) / 255.0 * m[..., None]
    top.imshow(_show(images[i]), cmap='gray', vmin=0, vmax=255)
    bottom.imshow(_show(masked), cmap='gray', vmin=0, vmax=1)
    if titles:
      top.set_title(titles[i], fontsize=7)
  for ax in axes.ravel():
    ax.axis('off')
  for r in range(rows):
    for ax, label in ((axes[2 * r, 0], 'input'), (axes[2 * r + 1, 0], 'attention')):
      ax.text(-0.1, 0.5, label, transform=ax.transAxes, rotation=90, va='center', ha='right',
              fontsize=8)
  _save(fig, path)


def posemb_similarity(similarity: np.ndarray, path: str) -> None:
  """Figure 7 (centre): per patch position, its embedding's similarity with all others."""
  gh, gw = similarity.shape[:2]
  fig, ax = plt.subplots(figsize=(4.5, 4.5 * gh / gw))
  image = ax.imshow(tile(similarity), cmap='viridis', vmin=-1, vmax=1)
  ax.set(xticks=[(gw + 1) * j + gw / 2 - 0.5 for j in range(gw)],
         xticklabels=range(1, gw + 1), yticks=[(gh + 1) * i + gh / 2 - 0.5 for i in range(gh)],
         yticklabels=range(1, gh + 1), xlabel='input patch column', ylabel='input patch row')
  ax.tick_params(length=0, labelsize=7)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='cosine similarity')
  _save(fig, path)


def embedding_filters(components: np.ndarray, explained: np.ndarray, path: str,
                      columns: int = 7) -> None:
  """Figure 7 (left): the principal components of the embedding filters, each rescaled."""
  k, ph, pw, c = components.shape
  lo = components.min(axis=(1, 2, 3), keepdims=True)
  hi = components.max(axis=(1, 2, 3), keepdims=True)
  scaled = (components - lo) / np.maximum(hi - lo, 1e-12)
  rows = -(-k // columns)
  padded = np.ones((rows * columns, ph, pw, c))
  padded[:k] = scaled
  image = tile(padded.reshape(rows, columns, ph, pw, c), fill=1.0)
  fig, ax = plt.subplots(figsize=(0.55 * columns + 0.5, 0.55 * rows + 0.4))
  ax.imshow(_show(image), cmap='gray', vmin=0, vmax=1, interpolation='nearest')
  ax.set_title(f'embedding filters: top {k} principal components '
               f'({100 * explained.sum():.0f}% of variance)', fontsize=8)
  ax.axis('off')
  _save(fig, path)
