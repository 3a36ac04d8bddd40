"""Where a model's weights come from:
`mpp:DIR | mae:DIR | simmim:DIR | supervised:DIR | vit_jax:FILE.npz | hf:DIR | timm:DIR`.

`load(spec)` turns a spec into the official ViT parameter tree, the architecture it implies
(a `vit.models.ModelSpec`, ready for `vit.config.build_model`) and the class names when the
checkpoint knows them. `adapt_params` then maps those weights onto another model of
the same backbone, at another resolution or with a new head, exactly as fine-tuning does
(paper §3.2): position embeddings interpolated in 2D, the head zeroed.

This module reads specs and dispatches: each published format has its reader (and writer) in
`vit/formats/` (vit_jax.py, hf.py, timm.py; `vit.formats.registry` names them), which states
what the files say beyond shapes (GELU flavour, LayerNorm epsilon, input normalisation as the
model's `pixels` key, image size); `vit.architecture` infers the rest from the shapes and
checks them; `vit.class_names` keeps a workdir's label names; `vit.transfer` does the
fine-tuning surgery (`merge_model`, `adapt_params`). Their entry points are importable from
here too, where callers have always found them. A checkpoint's model becomes a `ModelSpec`
here, where it is read (a format's stated keys over its shapes, a workdir's saved config: both
through `vit.config.upgrade`), and travels as one from then on.

Checkpoints of this project (`mpp:`, `mae:`, `simmim:`, `supervised:`) are read at their latest
step that reads (an earlier one cannot be chosen), and their Polyak average (EMA parameters) is
used when the run kept one: it is the run's reported model (the paper evaluates and transfers the
averaged weights, Appendix B.1). Pass `use_ema=False` for the raw parameters. The `Checkpoint`
names the step read and the run's `total_steps`: `origin` and `unfinished` give the lines that
say so. A leading `~` in PATH is the home directory (`vit.user_paths`).
"""
from __future__ import annotations

import json
import logging
import os
from typing import NamedTuple, Optional

import jax
import ml_collections
import numpy as np

from vit import architecture, checkpoints, config as config_lib, user_paths
from vit.architecture import (abstract_params, grid_at, infer_model,  # noqa: F401 (re-exported)
                              patch_stride)
from vit.class_names import (CLASS_NAMES_FILE, read_class_names,  # noqa: F401 (re-exported)
                             write_class_names)
from vit.errors import ConfigError, UserError, require_directory
from vit.formats import hf as hf_format, registry
from vit.formats.tree import check_finite, flatten
from vit.models import vit as vit_model
from vit.models.spec import ModelSpec
from vit.transfer import (BACKBONE_KEYS, HEAD_KEYS, adopt_backbone,  # noqa: F401 (re-exported)
                          adapt_params, merge_model)

logger = logging.getLogger(__name__)

# Pretraining workdirs: params['backbone'] is the ViT; the objective's own top-level parameters
# beside it tell them apart (mpp/, mae/, simmim/ objective.py).
PRETRAINING = {'mpp': ('an MPP', {'mask_embedding', 'head'}),
               'mae': ('an MAE', {'decoder'}),
               'simmim': ('a SimMIM', {'mask_token', 'decoder'})}
FORMATS = (*PRETRAINING, 'supervised', *registry.FORMATS)
# What config.init takes, as its errors list it.
INIT_FORMATS = ('mpp:DIR, mae:DIR, simmim:DIR, supervised:DIR, vit_jax:FILE.npz, hf:DIR or '
                'timm:DIR')


def require_init(config: ml_collections.ConfigDict) -> None:
  """ConfigError naming config.init and the specs it takes when the config sets none: the
  one line of supervised.finetune, and of vit.plan for a fine-tuning config, whose model
  sizes the checkpoint gives."""
  if not config.get('init'):
    raise ConfigError('init', config.get('init'),
                      f'set the weights to start from: {INIT_FORMATS}')


class Checkpoint(NamedTuple):
  """What `load` returns: the official parameter tree and what the checkpoint states about its
  model, classes, input and run (see `load`)."""
  params: dict          # The official ViT tree (numpy arrays), head included when present.
  model: ModelSpec      # Its architecture; num_classes/representation_size from the params.
  class_names: Optional[list[str]]
  image_size: int       # Its input resolution: a processor's, else its position embeddings'.
  channels: int
  view: Optional[dict] = None  # Its stated evaluation view (EvalView's fields); None: resize.
  step: Optional[int] = None  # The step read from a workdir; None for a published format.
  total_steps: Optional[int] = None  # That run's config.total_steps.
  skipped: tuple[int, ...] = ()  # The workdir's newer steps that did not read (damaged).
  interrupted: tuple[int, ...] = ()  # Its newer steps whose save never finished.
  size_of_command: bool = False  # image_size is the reading command's: the files state none.


def load(spec: str, *, use_ema: bool = True, image_size: Optional[int] = None,
         size_flag: Optional[str] = None) -> Checkpoint:
  """Loads `spec` = `FORMAT:PATH` with FORMAT one of mpp, mae, simmim, supervised, vit_jax, hf,
  timm.

  Returns a `Checkpoint`: `params`, the official ViT tree as host numpy arrays (a pretraining
  run's backbone only; `head`/`pre_logits` when the checkpoint has them); `model`, the
  `ModelSpec` that `vit.config.build_model(model)` turns into the network these params fit;
  `class_names` when known; `image_size` and `channels` it was trained at. `use_ema` picks a
  workdir's Polyak-averaged parameters when the run kept them. `image_size` is the size of the
  command that reads it (set by its `size_flag`: '--resolution'), taken where the checkpoint
  states none: a big_vision sincos2d `vit_jax:FILE.npz` without `@SIZE`, whose sin-cos model
  runs at any size; that command checks it against the patch stride itself.

  Raises UserError naming the spec for a malformed spec, a missing path, a file of the wrong
  format, a `~user` PATH of no user, a saved step or checkpoints folder given for a workdir, a
  workdir that holds no saved step (saying what it should hold), a run directory given to a
  published format (with the spec that reads it, e.g. 'give mae:PATH'), a checkpoint that
  states no size where `image_size` is None (saying to give `@SIZE` or `size_flag`), or
  parameters whose shapes disagree with the architecture they imply (each key with both
  shapes).
  """
  fmt, sep, path = spec.partition(':')
  if not sep or fmt not in FORMATS or not path:
    raise UserError(f'init spec {spec!r}: expected FORMAT:PATH with FORMAT one of '
                    f'{", ".join(FORMATS)} ({_spelled(spec, fmt, sep, path)})')
  spec = user_paths.expand_spec(spec)  # `mae:~/runs/mae`: bash leaves that ~ as it is.
  path = spec.partition(':')[2]
  steps = (None, None, (), ())
  if fmt in registry.FORMATS:
    params, model, names, size, view = _read_format(fmt, path, spec)
  else:
    (params, model, names, size, *steps), view = _load_workdir(fmt, path, use_ema), None
  _check_stride(size, model, spec)
  stated = size is not None or model.posemb != 'sincos_2d'
  if not stated:
    size = _size_of_command(spec, image_size, size_flag)
  ckpt = Checkpoint(params, model, names, *architecture.input_geometry(params, model, size, spec),
                    view, *steps, size_of_command=not stated)
  check_shapes(ckpt, spec)
  return ckpt


def _size_of_command(spec: str, image_size: Optional[int], size_flag: Optional[str]) -> int:
  """`image_size`, the reading command's size, for a checkpoint whose files state none (a
  big_vision sincos2d .npz without @SIZE); UserError saying how to give one where it is None:
  after the file name, or with the command's `size_flag` (fine-tuning and prediction, named
  where a command has none: vit.export and vit.inspect)."""
  if image_size is not None:
    return image_size
  other = (f', or set {size_flag}' if size_flag else
           ' (fine-tuning takes its config.image_size, supervised.predict its --resolution)')
  raise UserError(f'{spec}: no pos_embedding: fixed sine-cosine position embeddings (big_vision '
                  f'posemb="sincos2d"), which state no image size; give the size it was trained '
                  f'at after the file name, {spec}@SIZE (e.g. @224){other}')


def _spelled(spec: str, fmt: str, sep: str, path: str) -> str:
  """How to write the malformed `spec`: 'give mae:PATH' for a FORMAT in capitals, and for a PATH
  without one that is a trainer's workdir (its objective read from its newest saved config) or
  an .npz file; examples otherwise."""
  if sep and path and fmt.lower() in FORMATS:
    return f'lower case: give {fmt.lower()}:{path}'
  where = os.path.expanduser(spec)
  if sep or not os.path.exists(where):
    return 'e.g. vit_jax:ViT-B_16.npz, hf:./vit-base'
  if os.path.isfile(where) and where.endswith('.npz'):
    return f'an .npz file: give vit_jax:{spec}'
  fmt = _run_format(where)
  if fmt is None:  # No step, or none that reads: the loader will say which.
    return 'e.g. vit_jax:ViT-B_16.npz, hf:./vit-base'
  return f'a run directory: give {fmt}:{spec}'


def _run_format(workdir: str) -> Optional[str]:
  """The FORMAT that reads the run `workdir`: its objective's ('mpp', 'mae', 'simmim'), read
  from its newest saved config, or 'supervised' for a classifier's; None when no step's config
  reads (or there is no step)."""
  try:
    _, saved = next(checkpoints.saved_configs(workdir))
  except Exception:  # noqa: BLE001 (no step, or none that reads)
    return None
  return next((name for name in PRETRAINING if name in saved), 'supervised')


def _run_hint(path: str) -> str:
  """'; a training run directory: give mae:PATH' (the run's own FORMAT) when `path`, given to a
  published format, is a run's workdir (it holds saved steps) or lies in a run's checkpoints
  folder; '' otherwise. The format's reader only said what it missed ('no config.json')."""
  if checkpoints.has_steps(path):
    run, where = path, 'a training run directory'
  else:
    run = checkpoints.run_holding_checkpoints(path)
    if run is None:
      return ''
    where = f'inside the checkpoints folder of the training run {run}'
  fmt = _run_format(run)
  give = (f'{fmt}:{run}' if fmt else
          f'FORMAT:{run} with the FORMAT of its training (mpp, mae, simmim or supervised)')
  return f'; {where}: give {give}'


def _check_stride(size: Optional[int], model: ModelSpec, spec: str) -> None:
  """UserError when the input size a checkpoint states (None: none) is no multiple of its
  patch stride: no grid of patches covers it."""
  if size is not None and size % patch_stride(model):
    raise UserError(f'init {spec}: its input size {size}px is not a multiple of the patch '
                    f'stride {patch_stride(model)}')


# The library that runs each published format's checkpoints, as the warnings name it.
_PEERS = {'hf': 'transformers', 'timm': 'timm', 'vit_jax': 'the official code'}


def _read_format(fmt: str, path: str, spec: str):
  """(params, model, class names, image size, view) of a published format's checkpoint."""
  try:
    read = registry.FORMATS[fmt].load(path)
  except UserError as e:
    raise UserError(f'{e}{_run_hint(path)}') from None
  # Shapes fix the sizes; the files state the rest (an official .npz states nothing, and
  # the official checkpoints all use tanh GELU, LayerNorm eps 1e-6 and x / 127.5 - 1).
  try:
    model = infer_model(read.params, read.stated)
  except UserError as e:
    raise UserError(f'{spec}: {e}') from None
  # Its own grid must be square, whatever size its processor states. Without a table (a
  # sincos_2d model) the reader's size, if any, is the model's own.
  table = 'pos_embedding' in read.params['Transformer'].get('posembed_input', {})
  own = architecture.input_geometry(read.params, model, None, spec)[0] if table else None
  _check_stride(read.image_size, model, spec)  # Before the warning that it is interpolated to.
  if own is not None and read.image_size is not None and read.image_size != own:
    logger.warning(f'{spec}: its files state {read.image_size}px inputs and its position '
                   f'embeddings are for {own}px; they are interpolated to {read.image_size}px '
                   f'(paper §3.2), where {_PEERS[fmt]} refuses such inputs unless told to '
                   f'interpolate its own way, so the logits differ from those it computes')
  return read.params, model, read.class_names, read.image_size, read.view


def load_init(config) -> Checkpoint:
  """`load(config.init)` for a run that starts from it (fine-tuning, `vit.plan`): read at
  config.image_size where its files state no size (a big_vision sincos2d .npz without @SIZE);
  any other size it states is the pretraining one, and the run's config.image_size is the one
  fine-tuned at, as for every init."""
  return load(config.init, image_size=config.get('image_size'), size_flag='config.image_size')


def load_workdir(path: str, *, use_ema: bool = True) -> Checkpoint:
  """A workdir of this project's trainers, of any objective (told apart by its params), read
  as `load` reads `FORMAT:PATH`; a leading `~` is the home directory. UserError as `load`'s,
  naming --checkpoint."""
  path = user_paths.expand(path, '--checkpoint')
  params, model, names, size, *steps = _load_workdir(None, path, use_ema)
  ckpt = Checkpoint(params, model, names, *architecture.input_geometry(params, model, size),
                    None, *steps)
  check_shapes(ckpt, path)
  return ckpt


def _load_workdir(fmt: Optional[str], path: str, use_ema: bool):
  """(params, model, class names, image size, step read, the run's total_steps, the newer steps
  that did not read, the newer steps whose save never finished) of a workdir; one warning line
  names those steps (the unfinished ones on process 0 only) and the step read."""
  # A run is read from its --workdir; a file given here is most often a published checkpoint.
  hint = f'; for an .npz of parameters, vit_jax:{path}' if path.endswith('.npz') else ''
  label = f'{fmt}:{path}' if fmt else f'--checkpoint {path}'
  if fmt:
    require_directory(path, label, f'a run directory (the --workdir of {fmt} training)', hint)
  else:
    require_directory(path, label, 'a run directory',
                      hint or ' (a trainer workdir, or FORMAT:PATH)')
  _refuse_inside_checkpoints(path, label, fmt)
  if fmt:
    _refuse_published_folder(path, label)
  saved, params, step, skipped, _, interrupted = checkpoints.read_newest(
      path, use_ema=use_ema, label=label, trainer=f'{fmt} training' if fmt else 'a trainer')
  # An interrupted save is named by process 0 alone, as a resume names it
  # (checkpoints.tell_interrupted): every process of a job named the same folder. A damaged
  # step is each process's own read, which each still says.
  told = interrupted if jax.process_index() == 0 else ()
  if skipped or told:
    logger.warning(_skipped_line(label, skipped, told, step))
  check_finite(flatten(params), f'{path}/checkpoints/{step}')
  found = _pretraining_kind(params)
  if fmt is None:
    fmt = found or 'supervised'
  if fmt in PRETRAINING:
    if found != fmt:
      raise UserError(f'{fmt}:{path}: not {PRETRAINING[fmt][0]} checkpoint (params hold '
                      f'{", ".join(sorted(params))}); try {found or "supervised"}:{path}')
    params = params['backbone']
  elif found:
    raise UserError(f'supervised:{path}: {PRETRAINING[found][0]} checkpoint (params hold '
                    f'"backbone"); use {found}:{path}')
  # The official looped tree whatever the run trained (model.scan_layers stacks the blocks).
  params = vit_model.unstack_blocks(jax.tree.map(np.asarray, dict(params)))
  # The saved config has the architecture (also the ablations' posemb and axial blocks, which
  # shapes alone cannot tell); only the heads may have been changed since.
  model = config_lib.upgrade(config_lib.resolved_model(ml_collections.ConfigDict(saved))).replace(
      scan_layers=False, num_classes=architecture.out_dim(params, 'head'),
      representation_size=architecture.out_dim(params, 'pre_logits'))
  if model.attention_kernel == 'cudnn':  # Where it is read, not where it trained: 'auto' takes
    model = model.replace(attention_kernel='auto')  # cuDNN on a GPU in bf16, XLA on a CPU.
  if model.classifier == 'unpooled':  # MPP reads every token; the class token is still there.
    model = model.replace(classifier='token' if 'cls' in params else 'gap')
  return (params, model, read_class_names(path, model.num_classes), saved.get('image_size'), step,
          saved.get('total_steps'), tuple(s for s, _ in skipped),
          tuple(s for s, _ in interrupted))


def _skipped_line(label: str, skipped: tuple[tuple[int, str], ...],
                  interrupted: tuple[tuple[int, str], ...], step: int) -> str:
  """The one warning of a workdir read at `step` because its newer steps did not read
  (`skipped`: (step, why), newest first) or were never completed (`interrupted`: (step, the
  folder its save left), newest first): it names the spec or --checkpoint, each such step and
  why, and the step used. The fine-tune's 'at step 3 of 3' alone looked like the run's end, and
  an interrupted save was not said at all (orbax lists finished steps only)."""
  parts = []
  if skipped:
    many = len(skipped) > 1
    which = (f'steps {", ".join(str(s) for s, _ in skipped)} are' if many
             else f'step {skipped[0][0]} is')
    why = '; '.join(f'{s}: {r}' if many else r for s, r in skipped)
    parts.append((skipped[0][0], f'{which} damaged ({why})'))
  if interrupted:
    parts.append((interrupted[0][0], checkpoints.interrupted_words(interrupted)))
  told = ' and '.join(words for _, words in sorted(parts, reverse=True))  # Newest first.
  used = 'the newest that reads' if skipped else 'the newest complete one'
  again = 'them' if len(skipped) + len(interrupted) > 1 else 'it'
  return (f'{label}: its newest checkpoint {told}; using step {step}, {used} (rerun its '
          f'training command with the same --workdir to save {again} again)')


def _refuse_published_folder(path: str, label: str) -> None:
  """UserError '{label}: a ... folder (config.json), not a run directory; load it with
  hf:PATH' (or timm:) when `path` has no checkpoints folder but a transformers or timm
  config.json: it was 'PATH: no checkpoint found under PATH/checkpoints', naming neither the
  spec nor the format that reads the folder. Anything else is left to the workdir reader."""
  config_json = os.path.join(path, 'config.json')
  if os.path.isdir(os.path.join(path, 'checkpoints')) or not os.path.isfile(config_json):
    return
  try:
    with open(config_json) as f:
      kind = hf_format.config_kind(json.load(f))
  except (OSError, ValueError, AttributeError):  # Unreadable, not JSON, not an object.
    return
  if kind in ('hf', 'timm'):
    library = 'Hugging Face transformers' if kind == 'hf' else 'timm'
    raise UserError(f'{label}: a {library} folder (config.json), not a run directory; load it '
                    f'with {kind}:{path}')


def _refuse_inside_checkpoints(path: str, label: str, fmt: Optional[str]) -> None:
  """UserError pointing at the workdir when `path` is a run's checkpoints folder or lies in
  one (a saved step, `WORKDIR/checkpoints/6`): readers take a workdir, the folder that holds
  `checkpoints/`, and read its newest step that reads; no earlier step can be chosen."""
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return
  workdir = checkpoints.run_holding_checkpoints(path)
  if workdir is None:  # A folder named so by chance, not a run's.
    return
  given = f'{fmt}:{workdir}' if fmt else workdir
  raise UserError(f'{label}: inside the checkpoints folder of the run {workdir}; give the run '
                  f'itself, {given} (the folder that holds checkpoints/): its newest step that '
                  'reads is taken, and no earlier step can be chosen')


def _pretraining_kind(params) -> Optional[str]:
  """'mpp', 'mae' or 'simmim' for a pretraining run's params; None for a classifier's."""
  if 'backbone' not in params:
    return None
  others = set(params) - {'backbone'}
  return next((k for k, (_, keys) in PRETRAINING.items() if keys == others), None)


def check_shapes(ckpt: Checkpoint, spec: str) -> None:
  """Every parameter has the shape the inferred architecture gives it; UserError naming `spec`
  and listing those that don't (vit.architecture.check_shapes)."""
  architecture.check_shapes(ckpt.params, ckpt.model, ckpt.image_size, ckpt.channels, spec)


# What a training run keeps at the top of its workdir beside checkpoints/ (vit.training.loop,
# the lock of vit.checkpoints): readers take its class names from there, a resumed run the rest.
_RUN_FILES = (checkpoints.LOCK_FILE, 'batch_contract.json', CLASS_NAMES_FILE)


def refuse_writing_over(spec: Optional[str], out: Optional[str], *, flag: str,
                        source_flag: str = '--init', being: str = 'read',
                        by: str = 'the output', rename: str = 'name another file',
                        elsewhere: str = 'write it elsewhere') -> None:
  """UserError when the output `out` (of the command-line `flag`) would replace or change the
  checkpoint `spec` (of `source_flag`) that the command reads: the output was written over it
  without a word, and the checkpoint was gone (`--init vit_jax:X.npz --output X.npz`; `--output
  RUN/class_names.json` of `--init supervised:RUN` lost the run's label names). Raised before
  anything is read or written: '{flag} {out}: the checkpoint being {being} ({source_flag}
  {spec}), which {by} would replace; {rename}' (`_written_over` says which parts count).
  Nothing for an empty `spec` or `out`."""
  part = _written_over(spec, out) if spec and out else None
  if part is not None:
    what, verb = part
    advice = elsewhere if verb == 'change' else rename
    raise UserError(f'{flag} {out}: {what} being {being} ({source_flag} {spec}), which {by} '
                    f'would {verb}; {advice}')


def _written_over(spec: str, out: str) -> Optional[tuple[str, str]]:
  """(what of the checkpoint `spec` the path `out` is, 'replace' or 'change'), or None: a
  vit_jax file (with or without @SIZE) itself; an hf or timm folder, or a file directly in it
  that exists or that its reader would take (.json, .safetensors, .bin: a new
  preprocessor_config.json changes the model's input; a new folder inside it does not);
  a run's workdir, anything in its checkpoints/, and its own files (`_RUN_FILES`, TensorBoard
  events; other new files in a workdir are where its outputs go, as
  `checkpoints.refuse_inside_checkpoints` advises). Real paths are compared, so `./X.npz` and a
  link to it count. A `spec` without a FORMAT is a workdir (vit.export's --checkpoint); a path
  that does not exist holds no checkpoint to lose (its loader says so)."""
  fmt, sep, source = spec.partition(':')
  if not sep or fmt not in FORMATS:
    fmt, source = None, spec
  source = user_paths.expanded(source)
  if not source:  # `~user` of no user.
    return None
  if fmt == 'vit_jax':
    files = (source, source.rpartition('@')[0])
    same = os.path.exists(out) and any(
        f and os.path.isfile(f) and os.path.samefile(f, out) for f in files)
    return ('the checkpoint', 'replace') if same else None
  if not os.path.isdir(source):
    return None
  root, target = os.path.realpath(source), os.path.realpath(out)
  if target == root:
    return ('the checkpoint' if fmt in registry.FORMATS else 'the run', 'replace')
  if os.path.commonpath([root, target]) != root:
    return None
  if fmt in registry.FORMATS:  # Its reader takes the folder's own .json/.safetensors/.bin files.
    taken = os.path.dirname(target) == root and (
        os.path.isfile(target) or target.endswith(('.json', '.safetensors', '.bin')))
    return ('inside the folder of the checkpoint', 'change') if taken else None
  inner = os.path.relpath(target, root)
  if inner.split(os.sep)[0] == 'checkpoints':
    return 'inside the checkpoints folder of the run', 'change'
  if inner in _RUN_FILES or inner.startswith('events.out.tfevents.'):
    return 'a file of the run', 'replace'
  return None


def origin(spec: str, ckpt: Checkpoint) -> str:
  """`spec` for the logs, with the step read from a workdir: 'mae:runs/mae at step 1 of 30',
  and the newer steps that did not read or were never completed: '... at step 3 of 3, not its
  damaged step 4', '..., not its unfinished step 4'."""
  if ckpt.step is None:
    return spec
  told = f'{spec} at step {ckpt.step}' + (f' of {ckpt.total_steps}' if ckpt.total_steps else '')
  passed = [f'its {kind} step{"s" if len(steps) > 1 else ""} {", ".join(map(str, steps))}'
            for kind, steps in (('damaged', ckpt.skipped), ('unfinished', ckpt.interrupted))
            if steps]
  return told + (f', not {" nor ".join(passed)}' if passed else '')


def unfinished(spec: str, ckpt: Checkpoint) -> Optional[str]:
  """A warning's line when the step read from a workdir is before its run's config.total_steps
  (the run was stopped, failed or is still going: the line says which where this host can
  tell, `checkpoints.training_now`; or its later steps did not read, which this line names);
  None otherwise, and for later steps the load has already named (`ckpt.skipped`,
  `ckpt.interrupted`)."""
  if ckpt.step is None or not ckpt.total_steps or ckpt.step >= ckpt.total_steps:
    return None
  fmt, sep, path = spec.partition(':')
  workdir = user_paths.expanded(path if sep and fmt in FORMATS else spec)
  running = workdir and checkpoints.training_now(workdir)
  if running:
    return (f'{spec}: the run is still training ({running}); using its newest saved step, '
            f'{ckpt.step} of its config.total_steps {ckpt.total_steps}')
  if ckpt.skipped or ckpt.interrupted:  # `load` warned, naming them and the step used.
    return None
  newer = workdir and [s for s in checkpoints.steps_on_disk(workdir) if s > ckpt.step]
  if newer:  # The run may have finished: those steps did not read.
    return (f'{spec}: using step {ckpt.step} of its config.total_steps {ckpt.total_steps}, as '
            f'its newer step{"s" if len(newer) > 1 else ""} '
            f'{", ".join(map(str, newer))} did not read (rerun its training command with the '
            f'same --workdir to save {"them" if len(newer) > 1 else "it"} again)')
  return (f'{spec}: the run stopped before its end (step {ckpt.step} of its config.total_steps '
          f'{ckpt.total_steps}); using step {ckpt.step} anyway (rerun its training command with '
          'the same --workdir to finish it)')


def warn_if_unfinished(spec: str, ckpt: Checkpoint) -> None:
  """Logs `unfinished`'s line as a warning, if any: every command that reads a workdir's weights
  (fine-tuning, export, few-shot, predict, inspect) says it read a run short of its end."""
  warning = unfinished(spec, ckpt)
  if warning:
    logger.warning(warning)


def describe(ckpt: Checkpoint) -> str:
  """One line for the logs: sizes, classifier, resolution and head of a checkpoint ('head 10',
  or 'no head' for a pretrained encoder: it read 'head None')."""
  head = 'no head' if ckpt.model.num_classes is None else f'head {ckpt.model.num_classes}'
  size = (f'no stated image size (read at {ckpt.image_size}px)' if ckpt.size_of_command else
          f'trained at {ckpt.image_size}px')
  return f'{architecture.summary(ckpt.model)}, classifier {ckpt.model.classifier}, {size}, {head}'
