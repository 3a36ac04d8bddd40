"""The config schema shared by every trainer, its validation, and the model it describes.

Config files under configs/ start from `defaults()` (the core: model, data, optimiser, loop,
mesh, evaluation) and change a few fields; an objective's own keys are a section named after
its package (`config.mpp`), declared and checked by that package (vit/objective.py) and found
by that name, so MPP's keys never touch this file. Every key a trainer reads is declared, so a
misspelt key in a file or on the command line is reported instead of silently ignored. Model
keys follow the official vit_jax layout.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
from typing import Any, Mapping

import jax
import ml_collections
from ml_collections import config_dict

from vit import objective as objective_lib, sharding
from vit.data import subsets
from vit.errors import ConfigError, UserError
from vit.models import factory, layer_norm as layer_norm_lib, resnet
# The model factory lives beside the models; these names stay for the callers of vit.config.
from vit.models.factory import attention_kernel, layer_norm, resolved_model  # noqa: F401
from vit.models.spec import ModelSpec
from vit.models.vit import ATTENTIONS, POSEMBS, VisionTransformer

logger = logging.getLogger(__name__)

_none = config_dict.placeholder

CLASSIFIERS = ('token', 'gap', 'unpooled')
DTYPES = ('float32', 'bfloat16')
ATTENTION_KERNELS = ('auto', 'xla', 'cudnn')
LAYER_NORMS = ('auto', *layer_norm_lib.IMPLEMENTATIONS)


def model_defaults() -> ml_collections.ConfigDict:
  """Architecture keys; `name` (a preset) fills whichever of them are left unset (None).
  Resolved, they are a `vit.models.spec.ModelSpec` (`validate`, `upgrade`)."""
  return ml_collections.ConfigDict(dict(
      name=_none(str),
      patches=dict(size=_none(tuple)),
      hidden_size=_none(int),
      transformer=dict(mlp_dim=_none(int), num_heads=_none(int), num_layers=_none(int),
                       dropout_rate=0.0, attention_dropout_rate=0.0),
      resnet=dict(num_layers=_none(tuple), width_factor=1.0),
      classifier='token',
      representation_size=_none(int),
      num_classes=_none(int),
      # Official checkpoints: tanh-approximate GELU, LayerNorm eps 1e-6. HF ViT: exact, 1e-12.
      gelu_approximate=True,
      layer_norm_epsilon=1e-6,
      # Model input (x * rescale - mean) / std of uint8 pixels x, one mean/std per channel (or
      # one for all); unset: the official x / 127.5 - 1. Checkpoints state it (an HF
      # processor's rescale_factor, image_mean, image_std; timm's mean and std).
      pixels=dict(rescale=_none(float), mean=_none(tuple), std=_none(tuple)),
      posemb='learned_1d',
      attention='global',
      # jax.nn.dot_product_attention's implementation: 'auto' (cuDNN on NVIDIA GPUs in bf16,
      # XLA elsewhere: `attention_kernel()`), 'xla', or 'cudnn' (docs/performance.md).
      attention_kernel='auto',
      dtype='float32',  # Compute dtype; parameters and optimiser state stay float32.
      remat=False,
      # With remat: what the backward pass keeps rather than recomputes, a
      # jax.checkpoint_policies name (e.g. 'dots_with_no_batch_dims_saveable'); None: nothing.
      remat_policy=_none(str),
      # The blocks as one nn.scan (one compiled block, params stacked under 'encoderblock');
      # checkpoints read and written in other formats keep the official encoderblock_{i}.
      scan_layers=False,
      # LayerNorm's arithmetic: 'auto' (means as dots on CPU, reductions elsewhere:
      # `layer_norm()`), 'dots' or 'reduce' (vit/models/layer_norm.py).
      layer_norm='auto',
  ))


def defaults() -> ml_collections.ConfigDict:
  """The core config every config file starts from, at its defaults: seed, batch sizes, steps,
  image size, the model (`model_defaults`), data, optimiser, loop, checkpoints, mesh,
  config.init and few-shot evaluation. No objective section: a config adds its objective's
  (`config.mpp = mpp.objective.section()`)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 128  # Global, over all processes and devices.
  config.total_steps = 1000
  config.image_size = 224
  config.model = model_defaults()
  config.data = dict(
      source='fashion_mnist',  # 'fashion_mnist' | 'tfds:NAME' | 'array_record:DIR'
      data_dir=_none(str),
      train_split='train',
      eval_split='test',
      channels=3,
      inception_crop=False,
      flip=False,
      crop_padding=0,  # Training: random translation by up to this many pixels (0: none).
      worker_count=0,  # grain worker processes for decoding and augmentation; 0: threads only.
      read_threads=_none(int),  # grain threads per process; None: 16 (encoded images), 0 (arrays)
      prefetch_batches=2,  # Training batches made ahead on a background thread; 0: none.
      shuffle_seed=_none(int),
      # Evaluation view: short side resized to image_size / fraction, centre crop. 1.0 is a plain
      # resize of square images, as the official vit_jax evaluation; 0.875 the usual ImageNet view.
      eval_crop_fraction=1.0,
      skip_bad_records=False,  # True: drop undecodable records / bad labels, count them in logs.
      # Subsets of a split (vit/data/subsets.py). The last `holdout` records of train_split
      # are the 'holdout' split (set eval_split='holdout' to choose hyper-parameters on them).
      holdout=0,
      classes=_none(tuple),  # Class ids to keep, relabelled 0..k-1 in this order; None: all.
      train_fraction=1.0,  # Class-balanced fraction of train_split's labels (0.01: 1%).
      subset_seed=_none(int),  # The fraction's draw; None: config.seed.
  )
  config.optimizer = dict(
      name='adam',  # 'adam' (decoupled weight decay) | 'sgd' (momentum)
      learning_rate=1e-3,
      b1=0.9, b2=0.999, momentum=0.9,
      weight_decay=0.0,
      grad_clip_norm=1.0,
      warmup_steps=0,
      decay='cosine',  # 'cosine' | 'linear' | 'constant' | 'rsqrt' (vit/training/optimizers.py)
      accumulation_steps=1,
  )
  config.ema_decay = 0.0  # Polyak averaging of parameters; 0 turns it off.
  config.log_every = 50
  config.eval_every = 0  # 0: only at the end.
  config.checkpoint_every = 0  # 0: only at the end.
  config.keep_checkpoints = 3  # The last K steps; the best by best_metric is kept besides.
  config.best_metric = _none(str)  # An evaluation metric, e.g. 'eval/accuracy'; None: off.
  config.best_mode = 'max'  # 'max' | 'min': which end of best_metric is best.
  config.skip_nonfinite_steps = False  # Skip (and count) steps with a non-finite loss or grad.
  config.eval_batch_size = 256
  config.mesh = dict(data=-1, fsdp=1, tensor=1)
  # Fine-tuning: 'mpp:DIR' | 'mae:DIR' | 'simmim:DIR' | 'supervised:DIR' | 'vit_jax:F' |
  # 'hf:DIR' | 'timm:DIR'.
  config.init = _none(str)
  config.fewshot = dict(  # Few-shot linear evaluation (vit/evaluators/fewshot.py).
      enabled=False,  # Run at every evaluation (config.eval_every and the end).
      shots=(1, 5, 10, 25),
      l2_reg=2.0 ** 10,  # L2 strength of the headline numbers (big_vision's default).
      l2_regs=(2.0 ** -4, 1.0, 2.0 ** 4, 2.0 ** 8, 2.0 ** 12),  # Also reported.
      seed=0,  # Shot sampling.
      train_split='train',
      test_split=_none(str),  # None: data.eval_split.
      max_test=10000,
  )
  return config


def _flat_keys(cfg: ml_collections.ConfigDict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in cfg.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat_keys(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def sections(config: ml_collections.ConfigDict) -> dict[str, objective_lib.Definition]:
  """The objective sections a config carries: its top-level groups outside `defaults()`, each
  named after the package that declares it (`config.mpp`: mpp.objective.DEFINITION, found by
  vit.objective.resolve). A group that names no objective with a section is left out here
  and reported by `check_known_keys` as unknown."""
  core = _default_keys()[0]
  out = {}
  for key, value in config.items():
    if key in core or not isinstance(value, ml_collections.ConfigDict):
      continue
    try:
      definition = objective_lib.resolve(key)
    except ValueError:
      continue
    if definition.section is not None:
      out[key] = definition
  return out


def check_objective(config: ml_collections.ConfigDict, definition: objective_lib.Definition,
                    *, source: str, trainer: str, example: str | None = None,
                    hint: str | None = None) -> None:
  """Refuses a config written for another objective than the trainer's, before it is read.

  `definition`'s section (`config.mpp` for mpp.train) must be present, and no other
  objective's: a trainer would otherwise fail on the missing section with a traceback, or
  silently ignore the foreign one. A definition without a section (supervised) takes configs
  that carry none. `source` is the config file, `trainer` the command ('mpp.train'),
  `example` a config that fits (the trainer's default), `hint` what to do instead of using
  the foreign section's trainer (vit.plan: drop --objective). Raises UserError, one line
  naming the file and the section it has or lacks.
  """
  name, has = definition.name, sorted(sections(config))
  wants = [name] if definition.section is not None else []
  foreign = [s for s in has if s not in wants]
  needs = f'config.{name}' if wants else 'a config without an objective section'
  if foreign and name not in has:
    raise UserError(f'{source} is a config for {foreign[0]} (it has config.{foreign[0]}); '
                    f'{trainer} needs {needs}'
                    + (f': {hint}' if hint else _trainer_hint(foreign[0])))
  if foreign:
    raise UserError(f'{source} has config.{foreign[0]} besides config.{name}; {trainer} '
                    f'reads only config.{name}: remove config.{foreign[0]}')
  if wants and not has:
    raise UserError(f'{source} has no config.{name}, so it is not a config for {name}; '
                    f'{trainer} needs config.{name}'
                    + (f', as {example} has' if example else ''))


def check_no_init(config: ml_collections.ConfigDict, *, trainer: str) -> None:
  """Refuses `config.init` for a trainer that does not read it: the pretraining trainers
  (`trainer`, e.g. 'mpp.train') start from a random initialisation, so an init they ignored
  would train from scratch while the saved config claims a start. Raises ConfigError naming
  config.init and the one trainer that reads it."""
  if config.get('init'):
    raise ConfigError('init', config.init,
                      f'read only by supervised.finetune; {trainer} starts from a random '
                      'initialisation (remove config.init, or fine-tune with python -m '
                      'supervised.finetune)')


def _trainer_hint(section: str) -> str:
  """': use python -m mpp.train' when the section's package has a train module, else ''."""
  try:
    found = importlib.util.find_spec(f'{section}.train') is not None
  except ImportError:
    found = False
  return f': use python -m {section}.train' if found else ''


@functools.lru_cache(maxsize=1)
def _default_keys() -> tuple[frozenset[str], frozenset[str]]:
  """(the top-level keys, the dotted leaf keys) of `defaults()`, built once: a study validates
  hundreds of configs before it starts (study/check.py), and building the defaults for each
  was most of the cost."""
  return frozenset(defaults().keys()), frozenset(_flat_keys(defaults()))


def check_core_keys(config: ml_collections.ConfigDict, *, source: str) -> None:
  """Refuses a config that lacks keys of `defaults()` or of the `section()` of an objective
  it carries (one built by hand rather than from them: `config.mae = ConfigDict(mask_ratio=..)`),
  before anything reads it and fails on the first one with a KeyError or AttributeError.
  Raises UserError, one line naming `source` (the config file) and the first key missing."""
  have = set(_flat_keys(config))
  wanted = [(_default_keys()[1], 'vit.config.defaults(); a trainer\'s config starts from them, '
             'as the files under configs/ do')]
  for name, definition in sections(config).items():
    made_by = f'{definition.section.__module__}.section()'
    wanted.append((_flat_keys(definition.section(), f'{name}.'),
                   f'{made_by}; a config adds the section whole: config.{name} = {made_by}'))
  for keys, origin in wanted:
    missing = sorted(k for k in keys if k not in have
                     and not any(h.startswith(k + '.') for h in have))
    if missing:
      others = f' nor {len(missing) - 1} other key(s)' if len(missing) > 1 else ''
      raise UserError(f'--config {source}: has no config.{missing[0]}{others} of {origin}')


def check_known_keys(config: ml_collections.ConfigDict) -> None:
  """ConfigError naming the first key of `config` that neither `defaults()` nor the section of an
  objective it carries declares: a misspelt key, or a group that names no objective."""
  known = dict.fromkeys(_default_keys()[1])
  for name, definition in sections(config).items():
    known.update(_flat_keys(definition.section(), f'{name}.'))
  flat = _flat_keys(config)
  for key in flat:
    if key not in known and not any(key.startswith(k + '.') for k in known):
      # A config file's typo gets the hint a command-line override gets from config_flags.
      close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.8)
      raise ConfigError(key, flat[key], 'unknown config key'
                        + (f' (did you mean {close[0]}?)' if close else ''))


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None
             ) -> ModelSpec:
  """Checks everything knowable before compiling or loading; returns the resolved model.

  Raises ConfigError naming the first key at fault (an unknown key, a value out of range, an
  unknown choice such as `model.posemb`, a size that does not divide another) and its value.
  `num_devices` (default: jax.device_count()) must divide each micro-batch.
  """
  check_known_keys(config)
  _check_counts(config)
  channels = config.data.channels
  if channels not in (1, 3) or isinstance(channels, bool):
    raise ConfigError('data.channels', channels, 'must be 1 (greyscale) or 3 (RGB)')
  m = _resolve(config)
  overrides = factory.preset_overrides(config)
  if overrides:
    logger.warning('model.name=%s: the config\'s own %s override the preset',
                   config.model.name,
                   ', '.join(f'{key}={value} (preset: {want})' for key, value, want in overrides))
  subsets.check_config(config.data)
  _check_fewshot_off(config)
  _check_holdout_splits(config)
  pad = config.data.crop_padding
  if not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad < config.image_size:
    raise ConfigError('data.crop_padding', pad, 'must be an integer in [0, image_size)')
  if not 0.0 < config.data.eval_crop_fraction <= 1.0:
    raise ConfigError('data.eval_crop_fraction', config.data.eval_crop_fraction,
                      'must be in (0, 1]')
  _check_model(m)
  _check_training(config)
  for definition in sections(config).values():
    definition.validate(config, m)  # The objectives' own keys (vit/objective.py).
  num_devices = jax.device_count() if num_devices is None else num_devices
  accum = config.optimizer.accumulation_steps
  if (config.batch_size // accum) % num_devices:
    raise ConfigError('batch_size', config.batch_size,
                      f'each micro-batch of {config.batch_size // accum} must divide evenly '
                      f'over the {num_devices} devices')
  # Evaluation batches are split over the mesh's batch axes (data x fsdp; tensor-parallel
  # devices share rows). Found at the first evaluation otherwise: after the training steps,
  # before the last save.
  rows = sharding.batch_shards(config.mesh, num_devices)
  if config.eval_batch_size % rows:
    raise ConfigError('eval_batch_size', config.eval_batch_size,
                      f'must divide evenly over the {rows} devices of the batch axes '
                      '(mesh data x fsdp)')
  return m


@functools.lru_cache(maxsize=1)
def _fewshot_defaults() -> dict[str, Any]:
  return _flat_keys(defaults().fewshot)


def _same(value, default) -> bool:
  """A key left at its default: a list equals the tuple it spells ([1, 5] is (1, 5))."""
  if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
    return tuple(value) == tuple(default)
  return value == default


def _check_fewshot_off(config: ml_collections.ConfigDict) -> None:
  """One warning line naming the fewshot keys changed from their defaults while
  fewshot.enabled is off: nothing reads them then (`--config.fewshot.shots='(5,)'` alone
  evaluated nothing, without a word). A warning, not an error: a config file that sets them can
  be run with `--config.fewshot.enabled=False` to skip the evaluation on purpose."""
  if config.fewshot.enabled:
    return
  changed = [(f'fewshot.{key}', value) for key, value in _flat_keys(config.fewshot).items()
             if key != 'enabled' and not _same(value, _fewshot_defaults().get(key))]
  if not changed:
    return
  (key, value), others = changed[0], [f'{k}={v!r}' for k, v in changed[1:]]
  logger.warning('config.%s=%r: not used while fewshot.enabled is False%s; set '
                 '--config.fewshot.enabled=True to run the few-shot evaluation', key, value,
                 f' (nor {", ".join(others)})' if others else '')


def _check_holdout_splits(config: ml_collections.ConfigDict) -> None:
  """ConfigError naming a split key set to 'holdout' while data.holdout is 0: found before
  training (the evaluation pipeline is built at the first evaluation, after the steps)."""
  named = {'data.eval_split': config.data.eval_split}
  if config.fewshot.enabled:
    named.update({'fewshot.train_split': config.fewshot.train_split,
                  'fewshot.test_split': config.fewshot.test_split})
  for key, split in named.items():
    if split == subsets.HOLDOUT_SPLIT and not config.data.holdout:
      raise ConfigError(key, split, 'needs data.holdout > 0 (the held-out split is the last '
                        'data.holdout records of data.train_split)')


# Integer keys and their least value; where 0 is allowed, what it means.
_COUNTS = (
    ('batch_size', 1, None),
    ('total_steps', 1, None),
    ('image_size', 1, None),
    ('eval_batch_size', 1, None),
    ('log_every', 0, 'only at the end'),
    ('eval_every', 0, 'only at the end'),
    ('checkpoint_every', 0, 'only at the end'),
    ('optimizer.warmup_steps', 0, 'no warmup'),
    ('data.prefetch_batches', 0, 'none'),
)


def _lookup(config: ml_collections.ConfigDict, key: str):
  for part in key.split('.'):
    config = config[part]
  return config


# Seeds of grain's shuffles and maps, which take unsigned 32-bit ones (config.seed is theirs
# when data.shuffle_seed is None); numpy's generators take any integer >= 0.
_GRAIN_SEEDS = ('seed', 'data.shuffle_seed')
_NUMPY_SEEDS = ('data.subset_seed', 'fewshot.seed')


def _check_counts(config: ml_collections.ConfigDict) -> None:
  """Step counts, intervals and sizes: integers, none negative; zero only where it means
  something (a loop interval of 0 acts only at the last step, vit/training/loop.py `_due`).
  Seeds: integers in [0, 2**32), None where None means another seed."""
  for key, least, zero in _COUNTS:
    value = _lookup(config, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
      raise ConfigError(key, value, 'must be a positive integer' if least else
                        f'must be an integer >= 0 (0: {zero})')
  for key in (*_GRAIN_SEEDS, *_NUMPY_SEEDS):
    value, most = _lookup(config, key), 2 ** 32 if key in _GRAIN_SEEDS else None
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0
                              or (most and value >= most)):
      raise ConfigError(key, value, 'must be an integer in [0, 2**32)' if most else
                        'must be an integer >= 0')


def _resolve(config: ml_collections.ConfigDict) -> ModelSpec:
  """config.model as a spec, once its patch size and pixels have the shape a spec needs."""
  d = resolved_model(config)
  size = d['patches']['size']
  if (not isinstance(size, (tuple, list)) or len(size) != 2
      or any(not isinstance(s, int) or s <= 0 for s in size)):
    raise ConfigError('model.patches.size', size, 'must be two positive integers')
  if size[0] != size[1]:
    # image_size is one side, so such a patch makes a non-square grid, which every reader of
    # the checkpoint (fine-tuning, export, prediction, inspection) refuses: training would
    # run to the end and leave a run nothing can load.
    raise ConfigError('model.patches.size', size,
                      'must be square (fine-tuning, export and prediction read a run\'s '
                      'patch grid as square)')
  _check_pixels(d['pixels'] or {}, config.data.channels)
  res = d['resnet'] or {}
  if res.get('num_layers') is None and res.get('width_factor') != resnet.ResNetConfig.width_factor:
    # A plain ViT has no stem: its spec (and so its checkpoints) would drop the value unseen.
    raise ConfigError('model.resnet.width_factor', res['width_factor'],
                      'sets the ResNet stem of a hybrid; set model.resnet.num_layers too, or '
                      'a hybrid preset in model.name (R50+ViT-B/16)')
  m = ModelSpec.from_dict(d)
  stride = resnet.total_stride(m.resnet) if m.resnet else 1
  for p in m.patch_size:
    if config.image_size % (p * stride):
      raise ConfigError('image_size', config.image_size,
                        f'not divisible by the patch size {p * stride} '
                        f'(model.patches.size={m.patch_size}'
                        + (f' after the ResNet stride {stride})' if stride > 1 else ')'))
  return m


# The sizes a model needs positive (config.model key, ModelSpec field): zero or a negative
# number fails deep in an initialiser (ZeroDivisionError, a negative shape), and
# num_layers=0 would train a model without blocks.
_MODEL_SIZES = (('hidden_size', 'hidden_size'), ('transformer.mlp_dim', 'mlp_dim'),
                ('transformer.num_heads', 'num_heads'),
                ('transformer.num_layers', 'num_layers'))


def _check_sizes(m: ModelSpec) -> None:
  """ConfigError naming the first size that is not a positive integer; representation_size
  may also be None (no pre-logits layer)."""
  sizes = [(f'model.{key}', getattr(m, field)) for key, field in _MODEL_SIZES]
  if m.representation_size is not None:
    sizes.append(('model.representation_size', m.representation_size))
  for key, value in sizes:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ConfigError(key, value, 'must be a positive integer'
                        + (' (or None: no pre-logits layer)'
                           if key == 'model.representation_size' else ''))


def _check_model(m: ModelSpec) -> None:
  _check_sizes(m)
  if m.hidden_size % m.num_heads:
    raise ConfigError('model.transformer.num_heads', m.num_heads,
                      f'does not divide model.hidden_size={m.hidden_size}')
  for key, allowed in (('classifier', CLASSIFIERS), ('posemb', POSEMBS),
                       ('attention', ATTENTIONS), ('dtype', DTYPES),
                       ('attention_kernel', ATTENTION_KERNELS), ('layer_norm', LAYER_NORMS)):
    if getattr(m, key) not in allowed:
      raise ConfigError(f'model.{key}', getattr(m, key), f'must be one of {", ".join(allowed)}')
  if m.attention_kernel == 'cudnn' and m.dtype != 'bfloat16':
    raise ConfigError('model.attention_kernel', 'cudnn',
                      f'needs model.dtype=bfloat16 (cuDNN attention has no {m.dtype} kernel)')
  if m.attention_kernel == 'cudnn' and m.posemb == 'relative':
    raise ConfigError('model.attention_kernel', 'cudnn',
                      'cannot add model.posemb=relative biases (cuDNN\'s training kernels '
                      'refuse a bias over an odd token count); use xla')
  for kind, multiple in (('learned_2d', 2), ('sincos_2d', 4)):
    if m.posemb == kind and m.hidden_size % multiple:
      raise ConfigError('model.hidden_size', m.hidden_size,
                        f'must be a multiple of {multiple} for model.posemb={kind}')
  _check_scaling(m)
  _check_resnet(m)
  for key in ('dropout_rate', 'attention_dropout_rate'):
    if not 0.0 <= getattr(m, key) < 1.0:
      raise ConfigError(f'model.transformer.{key}', getattr(m, key), 'must be in [0, 1)')


def _check_resnet(m: ModelSpec) -> None:
  """The hybrid's stem widths: 64 * width_factor channels at its root, a multiple of
  GroupNorm's 32 groups (vit/models/resnet.py), and so is every stage's."""
  if m.resnet is None:
    return
  width = m.resnet.width_factor
  if (isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0
      or 64 * width != int(64 * width) or int(64 * width) % 32):
    raise ConfigError('model.resnet.width_factor', width,
                      'must make 64 * width_factor a positive multiple of 32 (the stem\'s '
                      'GroupNorm has 32 groups): 0.5, 1, 1.5, 2, ...')


def _check_training(config: ml_collections.ConfigDict) -> None:
  if config.optimizer.name not in ('adam', 'sgd'):
    raise ConfigError('optimizer.name', config.optimizer.name, 'must be adam or sgd')
  if config.optimizer.decay not in ('cosine', 'linear', 'constant', 'rsqrt'):
    raise ConfigError('optimizer.decay', config.optimizer.decay,
                      'must be cosine, linear, constant or rsqrt')
  if not 0.0 <= config.ema_decay < 1.0:
    raise ConfigError('ema_decay', config.ema_decay, 'must be in [0, 1); 0 turns it off')
  if not isinstance(config.keep_checkpoints, int) or config.keep_checkpoints < 1:
    raise ConfigError('keep_checkpoints', config.keep_checkpoints, 'must be an integer >= 1')
  if config.best_mode not in ('max', 'min'):
    raise ConfigError('best_mode', config.best_mode, 'must be max or min')
  best = config.best_metric
  if best and best.rpartition('/')[2].endswith('loss') and config.best_mode == 'max':
    # The default mode suits accuracies; MAE's and SimMIM's only evaluation is a loss, and
    # under 'max' retention would keep their worst step as the best, silently.
    raise ConfigError('best_mode', config.best_mode,
                      f'would keep the step of the highest {best} (config.best_metric) as the '
                      'best; a loss is best at its lowest: set best_mode to min')
  _check_optimizer_numbers(config.optimizer)
  accum = config.optimizer.accumulation_steps
  if accum < 1 or config.batch_size % accum:
    raise ConfigError('optimizer.accumulation_steps', accum,
                      f'must be >= 1 and divide batch_size={config.batch_size}')


def _check_optimizer_numbers(opt: ml_collections.ConfigDict) -> None:
  """The optimiser's real-valued keys: a negative rate or decay would train backwards, a
  moment outside [0, 1) diverges; optax would take them without a word."""
  if not opt.learning_rate > 0:
    raise ConfigError('optimizer.learning_rate', opt.learning_rate,
                      'must be > 0 (the peak of the schedule)')
  if not opt.weight_decay >= 0:
    raise ConfigError('optimizer.weight_decay', opt.weight_decay, 'must be >= 0 (0: none)')
  if opt.grad_clip_norm is not None and not opt.grad_clip_norm >= 0:
    raise ConfigError('optimizer.grad_clip_norm', opt.grad_clip_norm,
                      'must be >= 0 (0 or None: no clipping)')
  for key in ('b1', 'b2', 'momentum'):
    if not (key == 'momentum' and opt[key] is None) and not 0.0 <= opt[key] < 1.0:
      raise ConfigError(f'optimizer.{key}', opt[key], 'must be in [0, 1)')


def _check_scaling(m: ModelSpec) -> None:
  policy = m.remat_policy
  if policy is not None and not callable(getattr(jax.checkpoint_policies, policy, None)):
    raise ConfigError('model.remat_policy', policy, 'not a jax.checkpoint_policies name, e.g. '
                      'nothing_saveable, dots_with_no_batch_dims_saveable')
  if m.scan_layers and (m.posemb == 'relative' or m.attention != 'global'):
    raise ConfigError('model.scan_layers', True, 'needs model.attention=global and no '
                      'model.posemb=relative (their per-layer modules sit outside the blocks)')


def _check_pixels(px: dict, channels: int) -> None:
  given = [k for k in ('rescale', 'mean', 'std') if px.get(k) is not None]
  if given and len(given) < 3:
    missing = sorted({'rescale', 'mean', 'std'} - set(given))
    raise ConfigError(f'model.pixels.{missing[0]}', None,
                      'set rescale, mean and std together (or none: x / 127.5 - 1)')
  for key in ('mean', 'std') if given else ():
    if len(px[key]) not in (1, channels):
      raise ConfigError(f'model.pixels.{key}', px[key],
                        f'needs 1 or data.channels={channels} values')
  if given and (px['rescale'] <= 0 or any(v <= 0 for v in px['std'])):
    raise ConfigError('model.pixels', px, 'rescale and std must be positive')


def token_grid(config: ml_collections.ConfigDict, m: ModelSpec) -> tuple[int, int]:
  """(rows, cols) of patch tokens `m` sees at config.image_size (after a hybrid's stem)."""
  return factory.token_grid(config.image_size, m)


def upgrade(model: Mapping[str, Any]) -> ModelSpec:
  """A model dict in `config.model`'s layout as any version of the trainers saved it (a
  workdir's config, a checkpoint read by vit.init_spec, a format's stated keys), as a spec.

  The one place old saves are upgraded: a key they lack (one the schema gained since, such
  as posemb, attention, attention_kernel, scan_layers, remat_policy, layer_norm or pixels)
  takes its default from `model_defaults()`, and a key the schema no longer has is dropped.
  The sizes must be set (a resolved model: `resolved_model` of the saved config).
  """
  full = model_defaults().to_dict()
  _overlay(full, model)
  return ModelSpec.from_dict(full)


def _overlay(defaults: dict, saved: Mapping[str, Any]) -> None:
  for key, value in saved.items():
    if key not in defaults:
      continue
    if isinstance(defaults[key], dict) and isinstance(value, Mapping):
      _overlay(defaults[key], value)
    else:
      defaults[key] = value


def note_unused_head(config: ml_collections.ConfigDict, trainer: str) -> None:
  """Logs a note when config.model.num_classes is set for `trainer` ('mae.train'), whose
  objective pretrains without labels (MPP, MAE, SimMIM build the backbone headless, whatever
  the key says): the key was ignored without a word. A note, not a refusal: a supervised
  config's model is a fair model to plan or benchmark such an objective on (`vit.plan
  --objective mae`)."""
  if config.model.get('num_classes') is not None:
    logger.info('note: model.num_classes=%s is not used: %s pretrains a backbone without a '
                'classification head (fine-tune it with supervised.finetune for one)',
                config.model.num_classes, trainer)


def build_model(m: ModelSpec, *, num_classes: int | None = None,
                classifier: str | None = None) -> VisionTransformer:
  """`vit.models.factory.build_model`: the VisionTransformer `m` describes, its head
  overridden by `num_classes` and `classifier` when given."""
  return factory.build_model(m, num_classes=num_classes, classifier=classifier)
