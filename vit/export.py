"""Export a checkpoint to a published format:
`python -m vit.export --checkpoint DIR --format vit_jax|hf|timm --out PATH`.

`vit_jax`: the official .npz (flat '/'-joined parameter names), loadable by the official
vision_transformer code and by `--config.init=vit_jax:PATH`; a model the .npz cannot state
(exact GELU, another LayerNorm epsilon or input normalisation) is refused, naming what would be
lost and the formats that do hold it (vit.formats.registry.check_expressible). `hf`: a
directory with config.json + model.safetensors + preprocessor_config.json that
`transformers.ViTForImageClassification.from_pretrained` and `ViTImageProcessor` load with the
same logits (a headless MPP, MAE or SimMIM encoder: `ViTModel.from_pretrained(PATH,
add_pooling_layer=False)`, as the export's note says: it has no pooler). `timm`: a directory
with model.safetensors + config.json (architecture, model_args, pretrained_cfg) that timm's
VisionTransformer loads with the same logits. The Polyak-averaged parameters are exported when
the run kept them (--noema for the raw ones). An MPP checkpoint exports its ViT backbone; the
MPP prediction head is not part of any format.
`--checkpoint` also takes an init spec (e.g. a fine-tuned vit_jax:FILE.npz such as
imagenet21k+imagenet2012_ViT-B_16.npz, or timm:DIR -> --format hf, which refuses an
ImageNet-21k .npz's pre_logits layer; a Hugging Face model's exact GELU is refused by --format
vit_jax). A workdir is read at
its newest step that reads, which the summary line names (`at step 1 of 30`), with a warning
when the run stopped before its config.total_steps. The export is written beside `--out` and
replaces what is there only once complete (other files in an hf directory stay), so a failed
export never leaves a broken file where a good one stood. An `--out` inside a run's checkpoints
folder is refused: that folder holds only the run's saved steps; so is a run's workdir and,
for hf and timm, a folder that holds files but no earlier export (`/`, a home folder) or
another format's export or model; for vit_jax, an existing file that is not an earlier export;
and the --checkpoint's own file or folder, or a file its hf or timm folder's reader takes.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import stat
import sys
import zipfile

import numpy as np
from absl import flags

from vit import atomic_write, checkpoints, cli, init_spec
from vit.errors import UserError
from vit.formats import hf, registry
from vit.formats.registry import FORMATS

logger = logging.getLogger(__name__)


def export(checkpoint: str, fmt: str, out: str, *, use_ema: bool = True) -> init_spec.Checkpoint:
  """Writes `checkpoint` (a workdir or an init spec) as format `fmt` (vit.formats.registry)
  at `out`, replacing what is there only once complete. Returns the checkpoint read.

  Raises UserError for an unknown format, an empty `out`, an `out` of the wrong kind (a file
  where a directory is written, or the other way round), inside a run's checkpoints folder or its
  workdir, a folder of other files than an earlier export's or holding another format's export
  or another model, an existing file that is not an earlier export, the checkpoint's own file
  or folder or a file its hf or timm folder's reader takes (init_spec.refuse_writing_over), and
  a model the format cannot hold."""
  if fmt not in FORMATS:
    raise UserError(f'--format {fmt}: must be one of {", ".join(FORMATS)}')
  writer = FORMATS[fmt]
  # `--out "$OUT"` or `--out=$OUT` with OUT unset (a bare `--out $OUT` loses the empty word,
  # so absl never passes it ''): it was ': not written (No such file ...)'.
  if not out:
    raise UserError(f'--out is empty: name the {writer.SUFFIX or "folder"} '
                    f'{"file " if writer.SUFFIX else ""}to write the {fmt} export to')
  checkpoints.refuse_inside_checkpoints(out, 'export elsewhere', 'export')
  if not writer.SUFFIX:  # The name and kind first, before the checkpoint is read.
    article = 'an' if fmt == 'hf' else 'a'  # 'an hf', 'a timm'.
    if out.rstrip('/').endswith(('.npz', '.safetensors', '.json')):
      raise UserError(f'--out {out}: {article} {fmt} export is a directory; this name is a '
                      "file's (--format vit_jax writes a .npz)")
    if os.path.isfile(out):
      raise UserError(f'--out {out}: {article} {fmt} export is a directory, and this is a file')
    _refuse_a_foreign_folder(out)
    _refuse_another_models_folder(out, fmt)
  else:  # The name first: an existing images.npy was 'a .npz file that is not an export'.
    if not out.endswith(writer.SUFFIX):
      raise UserError(f'--out {out}: a {fmt} export is a {writer.SUFFIX} file')
    if os.path.isdir(out):  # Was 'not written (... is a directory)', the checkpoint read.
      raise UserError(f'--out {out}: a {fmt} export is a {writer.SUFFIX} file, and this is a '
                      'directory')
    _refuse_a_foreign_file(out, fmt, writer.SUFFIX)
  # --out the checkpoint itself: the export replaced it by its own rewriting (a big_vision
  # sincos2d .npz by a learned table at @SIZE, a scanned or bfloat16 one unscanned in float32,
  # an hf folder's processor and shards), and the original was gone.
  init_spec.refuse_writing_over(checkpoint, out, flag='--out', source_flag='--checkpoint',
                                being='exported', by='the export',
                                rename='export to a new name', elsewhere='export elsewhere')
  prefix, sep, _ = checkpoint.partition(':')
  if sep and prefix in init_spec.FORMATS:
    ckpt = init_spec.load(checkpoint, use_ema=use_ema)
  else:
    ckpt = init_spec.load_workdir(checkpoint, use_ema=use_ema)
  # Before anything is written; a refusal names the formats that do hold the model.
  registry.check_expressible(fmt, ckpt.params, ckpt.model)
  stated = dict(model=ckpt.model, class_names=ckpt.class_names, image_size=ckpt.image_size,
                view=ckpt.view)
  if writer.SUFFIX:
    with atomic_write.file(out) as partial:
      writer.save(ckpt.params, partial, **stated)
  else:
    with atomic_write.staging_dir(out) as staging:  # Its files replace their namesakes in out.
      writer.save(ckpt.params, staging, **stated)
      written = atomic_write.move_files(staging, out)
    _remove_stale_weights(out, written)
  return ckpt


# The weight files of an hf or timm folder: one model.safetensors, or shards and their index.
_WEIGHT_FILES = re.compile(r'model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json')


_REPOSITORY_FILES = re.compile(r'(README|LICEN[CS]E|NOTICE|MODEL_CARD)(\.\w+)?$', re.IGNORECASE)


def _refuse_a_foreign_folder(out: str) -> None:
  """UserError when the directory `out` holds files but no model (no config.json or weight
  files: `/`, a home or data folder), or is a training run's workdir: an hf or timm export
  adds its files beside what is there and replaces their namesakes, which is meant for an
  earlier export with a model card or notes of its own, not for any folder."""
  if not os.path.isdir(out):
    return
  names = os.listdir(out)
  checkpoints.refuse_a_run(out, 'export elsewhere', 'export')
  # What a model repository holds besides a model (a clone of a Hub repository to fill: .git,
  # .gitattributes, README.md) and what file browsers leave (.DS_Store) do not count.
  others = [n for n in names if not n.startswith('.') and not _REPOSITORY_FILES.match(n)]
  if others and 'config.json' not in names and not any(map(_WEIGHT_FILES.fullmatch, names)):
    raise UserError(f'--out {out}: a folder of other files ({len(others)}, no config.json or '
                    'model.safetensors of an earlier export); export to a new or empty folder')


def _refuse_another_models_folder(out: str, fmt: str) -> None:
  """UserError when `out` holds a config.json of another format's export or of another model:
  this export would replace that config.json and weights and leave the rest (an hf
  preprocessor_config.json beside timm files), a folder that neither library then reads."""
  path = os.path.join(out, 'config.json')
  if not os.path.isfile(path):
    return
  try:
    with open(path, encoding='utf-8') as f:
      cfg = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'--out {out}: its config.json is not readable JSON ({e}); export to a new '
                    'or empty folder') from None
  kind = hf.config_kind(cfg) if isinstance(cfg, dict) else 'not a JSON object'
  if kind != fmt:
    held = f'an {kind} export' if kind == 'hf' else f'a {kind} export' if kind == 'timm' else (
        f'another model (config.json: {kind})')
    raise UserError(f'--out {out}: holds {held}; --format {fmt} would replace only some of its '
                    'files: export to a new or empty folder')


def _refuse_a_foreign_file(out: str, fmt: str, suffix: str) -> None:
  """UserError when the file `out` exists and is not an earlier export of this format (an
  .npz of the user's own arrays): the export replaces the whole file."""
  if not os.path.isfile(out):
    return
  try:
    saved = np.load(out, allow_pickle=False)  # An archive's index only, not its arrays.
  except (OSError, ValueError, zipfile.BadZipFile):
    saved = None
  names = []
  if isinstance(saved, np.lib.npyio.NpzFile):  # A renamed .npy loads as one bare array.
    names = list(saved.files)
    saved.close()
  if not any(n == 'embedding/kernel' or n.endswith('/embedding/kernel') for n in names):
    raise UserError(f'--out {out}: a {suffix} file that is not an earlier {fmt} export (no '
                    'embedding/kernel array); export to a new name')


def _remove_stale_weights(folder: str, written: list[str]) -> None:
  """Deletes the weight files of a previous export that the new one did not replace (its old
  shards and index beside a new model.safetensors): transformers would read the index first.
  Runs only once the new files are in place."""
  for name in sorted(os.listdir(folder)):
    if _WEIGHT_FILES.fullmatch(name) and name not in written:
      os.remove(os.path.join(folder, name))


def notes(fmt: str, ckpt: init_spec.Checkpoint, out: str) -> list[str]:
  """What a user of the export `out` of `ckpt` in format `fmt` must know to load it right, one
  line each (printed by the CLI after the export)."""
  found = []
  if fmt == 'hf' and 'head' not in ckpt.params and 'pre_logits' not in ckpt.params:
    # transformers' ViTModel adds a pooler (dense + tanh) by default; this encoder (MPP, MAE,
    # SimMIM) has none, so from_pretrained would initialise one at random and warn MISSING.
    found.append(f'{out} is a headless encoder without a pooler: load it with '
                 f'transformers.ViTModel.from_pretrained({out!r}, add_pooling_layer=False)')
  return found


def main(argv):
  """`python -m vit.export`: writes --checkpoint in --format to --out (`export`), then logs what
  was exported, a warning when the run stopped before its total_steps, and the notes on loading
  the export. A user error is one line and exit status 2; SIGTERM (Ctrl-C) says in one line
  what state --out is in (`_stopped_line`) and exits with status 143 (130). SIGTERM ended it at
  once without a word, leaving its partial file beside --out."""
  del argv
  f = flags.FLAGS
  took_sigterm = cli.raise_on_sigterm()
  before, written = None, False
  try:
    before = _files_at(f.out)
    ckpt = export(f.checkpoint, f.format, f.out, use_ema=f.ema)
    written = True
    logger.info('exported %s (%s) as %s to %s', init_spec.origin(f.checkpoint, ckpt),
                init_spec.describe(ckpt), f.format, f.out)
    init_spec.warn_if_unfinished(f.checkpoint, ckpt)
    for note in notes(f.format, ckpt, f.out):
      logger.info('note: %s', note)
  except KeyboardInterrupt as e:
    if took_sigterm:  # A second SIGTERM ends it at once, as the default does.
      signal.signal(signal.SIGTERM, signal.SIG_DFL)
    terminated = isinstance(e, cli.Terminated)
    print(_stopped_line('stopped (SIGTERM)' if terminated else 'interrupted', f.out, before,
                        written), file=sys.stderr)
    sys.exit(143 if terminated else 130)  # As the trainers and vit.data.prepare.
  finally:
    if took_sigterm:
      signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _files_at(out: str) -> dict[str, tuple[int, int, int]]:
  """The file `out`, or the files in the folder `out`, each as (inode, mtime, size): `export`
  puts each file in place by renaming a new one over it, so a file it replaced differs."""
  try:
    paths = [os.path.join(out, n) for n in os.listdir(out)] if os.path.isdir(out) else [out]
  except OSError:
    return {}
  found = {}
  for path in paths:
    try:
      st = os.stat(path)
    except OSError:  # Nothing there.
      continue
    if stat.S_ISREG(st.st_mode):
      found[path] = (st.st_ino, st.st_mtime_ns, st.st_size)
  return found


def _stopped_line(how: str, out: str, before: dict | None, written: bool) -> str:
  """What a SIGTERM or Ctrl-C of `main` says of `out` (`before`: `_files_at` it as the export
  began; None if it had not). `export` writes beside `out` and renames what it wrote into place
  only once complete (vit.atomic_write); an exception before that deletes what it wrote, so
  `out` is as it was unless the renames had begun. A file's is one rename: once done, the
  export is complete; a folder's files are renamed one by one."""
  now = _files_at(out)
  before = now if before is None else before  # Stopped before the export began.
  if written or (now != before and not os.path.isdir(out)):
    return f'{how} after writing {out}: the export there is complete'
  if now == before:
    kept = f'{out} is unchanged' if before else f'nothing was written to {out}'
    return f'{how} before the export was written; {kept}'
  return (f'{how} while the export replaced the files in {out}: some may be the previous '
          "export's; run the same command again")


if __name__ == '__main__':
  flags.DEFINE_string('checkpoint', None, 'a trainer workdir (or an init spec FORMAT:PATH)',
                      required=True)
  flags.DEFINE_enum('format', None, list(FORMATS), 'vit_jax (.npz), hf or timm (a directory)',
                    required=True)
  flags.DEFINE_string('out', None, 'output .npz file (vit_jax) or directory (hf, timm)',
                      required=True)
  flags.DEFINE_bool('ema', True, 'export the Polyak-averaged parameters when present')
  cli.run(main)
