"""The analyses of a model on a set of images, and their files (PNG, JSON, npz)."""
from __future__ import annotations

import contextlib
import json
import os
from typing import Optional

import jax
import numpy as np

from vit import atomic_write, checkpoints, init_spec, preprocess
from vit.evaluators import fewshot
from vit.errors import UserError, write_reason
from vit.inspect import attention, embeddings, figures, images as images_lib
from vit.models import factory
from vit.models.spec import ModelSpec

FIGURES = ('attention_distance.png', 'attention_rollout.png', 'posemb_similarity.png',
           'embedding_filters.png')


def analyse(model: ModelSpec, params: dict, images: np.ndarray, *, show: int = 8,
            batch_size: int = 32, class_names: Optional[list] = None,
            what: str = 'the model', patch_mean: bool = False) -> dict:
  """Every §4.5 analysis of `params` (the ViT `model` describes) on uint8 `images`.

  `patch_mean`: the rollout maps read the mean of the patch tokens, the representation of a
  pretraining encoder (attention.rollout_map), not the class token's row.

  Raises UserError naming `what` and counting the images whose attention weights or outputs
  are not finite (finite weights whose activations overflow float32): their distances would be
  NaN, which inspect.json cannot hold."""
  size = images.shape[1]
  grid = factory.token_grid(size, model)
  pixels = (size // grid[0], size // grid[1])
  attn = attention.make_attention_fn(factory.build_model(model), preprocess.input_fn(model))
  distances, maps, predicted, bad = [], [], [], 0
  for start in range(0, len(images), batch_size):
    out, weights = jax.device_get(attn(params, images[start:start + batch_size]))
    bad += int(np.count_nonzero(~np.all([np.isfinite(a).reshape(len(a), -1).all(1)
                                         for a in (out, *weights)], axis=0)))
    distances.append(np.stack([attention.mean_attention_distance(w, grid, pixels)
                               for w in weights], axis=1))
    if start < show:
      maps.append(attention.rollout_map(attention.attention_rollout(weights), grid,
                                        patch_mean))
      if model.num_classes:
        predicted += [int(i) for i in np.argmax(out, axis=-1)]
  if bad:
    raise UserError(f'{what}: its attention weights or outputs are not finite (NaN or inf) for '
                    f'{bad} of {len(images)} images: its activations overflow float32, so '
                    f'nothing was written')
  result = dict(
      grid=grid, pixels_per_patch=pixels, image_size=size,
      attention_distance_per_image=np.concatenate(distances),  # [N, blocks, heads]
      rollout_maps=np.concatenate(maps)[:show], images_shown=images[:show],
      predicted=[(class_names[i] if class_names else str(i)) for i in predicted[:show]],
      rollout_of=attention.rollout_source(weights[0].shape[-1] - grid[0] * grid[1],
                                          patch_mean))
  result['attention_distance'] = result['attention_distance_per_image'].mean(axis=0)
  posemb = model.posemb
  per_patch = embeddings.patch_position_embeddings(params, posemb, grid)
  if per_patch is not None:
    result['posemb_similarity'] = embeddings.posemb_similarity(per_patch, grid)
  if model.resnet is None:  # A hybrid's embedding sees ResNet features, not pixels.
    components, explained = embeddings.filter_pca(params['embedding']['kernel'])
    if len(components):  # None when all filters are equal: no variance to draw.
      result['filter_components'], result['filter_explained_variance'] = components, explained
  return result


def check_out(out: str, images: Optional[str], init: Optional[str] = None) -> None:
  """UserError naming --out, before the model or any image is read, when it is inside a run's
  checkpoints folder (`checkpoints.refuse_inside_checkpoints`), a run's workdir (its root is the
  run's; vit.export refuses it as well, `checkpoints.refuse_a_run`), the --images folder (the
  figures written there were read back as images by the next run on it: 8 images, then 12,
  the distances moved; a figure would replace an image of its name), or the --init
  checkpoint's own file or folder (`init_spec.refuse_writing_over`, as fewshot and predict)."""
  advice = 'write the figures elsewhere'
  checkpoints.refuse_inside_checkpoints(out, advice, 'inspect')
  init_spec.refuse_writing_over(init, out, flag='--out', by='the figures', rename=advice,
                                elsewhere=advice)
  checkpoints.refuse_a_run(out, advice, 'inspect')
  if images and os.path.isdir(images) and os.path.isdir(out) and os.path.samefile(images, out):
    raise UserError(f'--out {out}: the --images folder itself; the next run would read the '
                    f'figures as images: {advice}')


def write(result: dict, out: str, summary: dict) -> dict:
  """Writes the figures that `result` has, inspect.npz and inspect.json into `out`, all or
  none: they are made beside it and moved in once all are complete, so a failed write (a full
  disk) leaves the previous ones together, unchanged, and a folder made for them removed.
  Then removes those of FIGURES it did not draw (`_remove_stale_figures`). Returns the summary.

  Raises UserError naming --out when it cannot be made or a stale figure cannot be removed."""
  existed = os.path.lexists(out)
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise UserError(f'--out {out}: cannot create the directory ({write_reason(e)})') from None
  try:
    with atomic_write.staging_dir(out) as staging:
      summary = _write_files(result, staging, summary)
      atomic_write.move_files(staging, out)
  except atomic_write.NotWritten as e:
    if existed:
      raise
    with contextlib.suppress(OSError):  # The empty folder made above; no previous one to keep.
      os.rmdir(out)
    raise atomic_write.NotWritten(e.path, e.reason, False, e.advice) from None
  _remove_stale_figures(out, summary['figures'])
  return summary


def _remove_stale_figures(out: str, drawn: list) -> None:
  """Deletes the FIGURES in `out` that are not in `drawn`. A model without a per-patch position
  embedding (relative, none) or a hybrid draws fewer figures; an earlier inspection's figure
  left beside the new inspect.json would pass for this model's. After the move, so a failed
  write still leaves the previous set whole."""
  for name in FIGURES:
    if name in drawn:
      continue
    try:
      os.remove(os.path.join(out, name))
    except FileNotFoundError:
      pass
    except OSError as e:
      raise UserError(f'--out {out}: cannot remove {name}, an earlier inspection\'s figure '
                      f'this model has none of ({write_reason(e)})') from None


def _write_files(result: dict, folder: str, summary: dict) -> dict:
  path = lambda name: os.path.join(folder, name)
  written = ['attention_distance.png', 'attention_rollout.png']
  figures.attention_distance(result['attention_distance'], result['image_size'], path(written[0]))
  figures.attention_rollout(result['images_shown'], result['rollout_maps'], path(written[1]),
                            titles=result['predicted'] or None)
  if 'posemb_similarity' in result:
    written.append('posemb_similarity.png')
    figures.posemb_similarity(result['posemb_similarity'], path(written[-1]))
  if 'filter_components' in result:
    written.append('embedding_filters.png')
    figures.embedding_filters(result['filter_components'], result['filter_explained_variance'],
                              path(written[-1]))
  # Plain writes: the folder is write()'s staging folder, moved in only once all are whole.
  np.savez_compressed(path('inspect.npz'), **{k: np.asarray(v) for k, v in result.items()
                                              if isinstance(v, np.ndarray)})
  distance = result['attention_distance']
  summary = dict(summary, figures=written, grid=list(result['grid']),
                 pixels_per_patch=list(result['pixels_per_patch']),
                 mean_attention_distance_px=[round(float(d), 2) for d in distance.mean(1)],
                 attention_distance_px_per_head=np.round(distance, 2).tolist(),
                 rollout_of=result['rollout_of'], rollout_predicted=result['predicted'])
  if 'filter_explained_variance' in result:
    summary['filter_explained_variance'] = np.round(
        result['filter_explained_variance'], 4).tolist()
  with open(path('inspect.json'), 'w') as f:
    json.dump(summary, f, indent=1, allow_nan=False)  # analyse refused non-finite ones.
  return summary


def inspect(spec: str, out: str, *, images: Optional[str] = None, max_images: int = 128,
            show: int = 8, batch_size: int = 32, representation: str = 'auto') -> dict:
  """Loads `spec` (vit.init_spec), runs every analysis and writes the files to `out`.

  `representation` (vit.evaluators.fewshot.REPRESENTATIONS) is the row the rollout reads, as
  few-shot reads the same spec: 'auto' reads an mpp:, mae: or simmim: encoder's mean of patch
  tokens and a classifier's class token; 'patch_mean' reads the patch mean of any format (an
  encoder exported to vit_jax:, hf: or timm:; a model without a class token reads its mean of
  all tokens either way).
  """
  ckpt = init_spec.load(spec)
  init_spec.warn_if_unfinished(spec, ckpt)
  patch_mean = fewshot.reads_patch_mean(spec, representation)
  pictures, source = images_lib.load(images, ckpt.image_size, ckpt.channels, max_images,
                                     ckpt.view)
  model = ckpt.model
  result = analyse(model, ckpt.params, pictures, show=min(show, len(pictures)),
                   batch_size=batch_size, class_names=ckpt.class_names, what=spec,
                   patch_mean=patch_mean)
  summary = dict(model=init_spec.describe(ckpt), init=spec, posemb=model.posemb,
                 attention=model.attention,
                 images=f'{len(pictures)} from {source}')
  return write(result, out, summary)
