"""Few-shot linear evaluation (paper §4.1 and Appendix B.2), as big_vision's `fewshot_lsr`.

Frozen representations of k examples per class (k = 1, 5, 10, 25, drawn with a seed) are
mapped onto {-1, +1} one-hot targets by closed-form regularised least squares; the accuracy of
that linear map on the evaluation split is the few-shot accuracy. The formulation follows the
reference implementation so numbers compare: features standardised with the training mean and
population std (+1e-5), a constant feature of 100 for the (almost unregularised) bias, and the
primal or dual solve, whichever matrix is smaller.

As a periodic evaluator: `FewShotEvaluator` (the supervised, MPP, MAE and SimMIM trainers;
config.fewshot). On its own: `python -m vit.evaluators.fewshot --init SPEC --dataset
fashion_mnist`, on the representation the checkpoint's own trainer evaluates
(`checkpoint_representation`: a classifier's pooled features, its class token or pre_logits;
the mean of the patch tokens of an mpp:, mae: or simmim: encoder) or the one --representation
names (so an encoder exported to vit_jax, hf or timm scores as its workdir did), which its JSON
names (`describe_representation`): the same weights score differently on the two.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np
from absl import flags

from vit import atomic_write, checkpoints, config as config_lib, init_spec, sharding
from vit.data import fashion_mnist, pipeline, transforms
from vit.evaluators import embedding
from vit.models import factory
from vit.models.spec import ModelSpec
from vit.preprocess import input_fn
from vit.errors import BadRecordError, ConfigError, UserError, counted

logger = logging.getLogger(__name__)

BIAS_CONSTANT = 100.0  # Large, so the bias is barely regularised (big_vision's choice).


class LeastSquares:
  """The solve of `linear_accuracy`, factored once so that many L2 strengths are cheap.

  With X [N, D] and Y [N, C]: W = (X^T X + l2 I)^-1 X^T Y when N >= D, else the equal dual form
  X^T (X X^T + l2 I)^-1 Y. One eigendecomposition of the smaller Gram matrix serves every l2.
  """

  def __init__(self, x: np.ndarray, y: np.ndarray, num_classes: int):
    x = np.asarray(x, np.float64)
    self.mean = x.mean(axis=0, keepdims=True)
    self.std = x.std(axis=0, keepdims=True) + 1e-5  # Population std, as the reference.
    x = self._features(x)
    targets = 2.0 * np.eye(num_classes)[np.asarray(y)] - 1.0
    if x.shape[0] >= x.shape[1]:
      self.eigs, q = np.linalg.eigh(x.T @ x)
      self.rhs, self.lhs = q.T @ (x.T @ targets), q
    else:
      self.eigs, q = np.linalg.eigh(x @ x.T)
      self.rhs, self.lhs = q.T @ targets, x.T @ q

  def _features(self, x: np.ndarray) -> np.ndarray:
    x = (np.asarray(x, np.float64) - self.mean) / self.std
    return np.pad(x, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)

  def weights(self, l2_reg: float) -> np.ndarray:
    return (self.lhs / (self.eigs + l2_reg)[None, :]) @ self.rhs

  def accuracy(self, test_x: np.ndarray, test_y: np.ndarray, l2_reg: float) -> float:
    predictions = np.argmax(self._features(test_x) @ self.weights(l2_reg), axis=1)
    return float(np.mean(predictions == np.asarray(test_y)))


def linear_accuracy(train_x, train_y, test_x, test_y, num_classes: int, l2_reg: float) -> float:
  """Test accuracy of the regularised least-squares classifier fit on (train_x, train_y)."""
  return LeastSquares(train_x, train_y, num_classes).accuracy(test_x, test_y, l2_reg)


def select_shots(source, max_shots: int, seed: int, num_classes: Optional[int] = None,
                 usable: Optional[Callable[[int], bool]] = None) -> dict[int, list[int]]:
  """Indices of the first `max_shots` examples of each class in a seeded permutation.

  Smaller shot counts take a prefix of these lists (as the reference does), so the 1-shot set
  lies inside the 5-shot set. Only labels are read, and only until every class is full; an
  index for which `usable` is False (a bad record) is passed over for the next of its class.
  """
  n = len(source)
  labels = getattr(source, 'labels', None)
  label_of = (lambda i: int(labels[i])) if isinstance(labels, np.ndarray) else (
      lambda i: int(source[i]['label']))
  names = getattr(source, 'class_names', None)
  num_classes = num_classes or (len(names) if names else None)
  chosen: dict[int, list[int]] = {}
  full = 0
  for i in np.random.default_rng(seed).permutation(n):
    label = label_of(int(i))
    picks = chosen.setdefault(label, [])
    if len(picks) < max_shots and (usable is None or usable(int(i))):
      picks.append(int(i))
      full += len(picks) == max_shots
      if num_classes and full == num_classes:
        break
  return dict(sorted(chosen.items()))


def _passing_over_bad_records(config: ml_collections.ConfigDict, source, skipped: list
                              ) -> Optional[Callable[[int], bool]]:
  """With config.data.skip_bad_records, `select_shots`' `usable`: whether record i of `source`
  decodes and has a usable label, a bad one logged and its reason appended to `skipped`. A bad
  shot the pipeline dropped would shift every later class's rows of features, so the draw
  passes over it instead. None without skipping: a bad shot stops the evaluation, named."""
  if not config.data.skip_bad_records:
    return None
  where = getattr(source, 'description', type(source).__name__)
  positions = pipeline.split_positions(source)
  num_classes = config.model.get('num_classes')

  def usable(i: int) -> bool:
    try:
      transforms.check_record(source[i], num_classes)
      return True
    except transforms.BadRecord as e:
      skipped.append(f'{where}: record {i if positions is None else int(positions[i])}: {e}')
      logger.warning('skipped %s (another of its class is drawn in its place)', skipped[-1])
      return False
  return usable


class _Subset:
  """A view of some records of a random-access source (for the pipeline's eval batches)."""

  def __init__(self, source, indices: Sequence[int]):
    self.source, self.indices = source, list(indices)
    self.description = f'{getattr(source, "description", "source")} (few-shot subset)'

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict:
    return self.source[self.indices[index]]


def make_representation_fn(model: ModelSpec) -> Callable:
  """params, uint8 images [B, H, W, C] -> float32 [B, D], the representation a head would
  see (pre_logits when present) of the ViT `model` describes."""
  classifier = 'token' if model.classifier == 'unpooled' else model.classifier
  net = factory.build_model(model, num_classes=0, classifier=classifier)
  to_input = input_fn(model)  # The checkpoint's own normalisation when it states one.

  def representation(params, images):
    params = {k: v for k, v in params.items() if k != 'head'}
    return net.apply({'params': params}, to_input(images), train=False)
  return representation


def make_patch_mean_fn(model: ModelSpec) -> Callable:
  """backbone params, uint8 images [B, H, W, C] -> float32 [B, D]: the mean of the encoded
  patch tokens of the ViT `model` describes, every patch visible.

  The frozen features of the masked-image objectives (MPP, MAE, SimMIM). MPP's and SimMIM's
  losses never reach the class token's output, so the patch tokens are what they shape; MAE's
  decoder attends to it, and MAE's own linear probe reads it (facebookresearch/mae
  main_linprobe.py), but its fine-tuning pools the patch tokens (`global_pool`): the patch mean
  is read for all three, so their probes compare like for like.
  ValueError when the model has no class token (classifier 'gap': its pooled features are this
  mean already).
  """
  if model.classifier == 'gap':
    raise ValueError('the model has no class token (classifier gap): its pooled features are '
                     'the mean of its patch tokens already')
  backbone = factory.build_model(model, num_classes=None, classifier='unpooled')
  to_input = input_fn(model)  # The same normalisation as in pretraining (`model.pixels`).

  def representation(params, images):
    encoded = backbone.apply({'params': params}, to_input(images), train=False)
    return encoded[:, 1:].mean(axis=1)
  return representation


REPRESENTATIONS = ('auto', 'pooled', 'patch_mean')  # --representation's choices.


def reads_patch_mean(spec: str, choice: str) -> bool:
  """Whether `choice` (one of REPRESENTATIONS) reads the mean of the patch tokens of the
  checkpoint init `spec` names: 'auto' for an mpp:, mae: or simmim: encoder. ValueError for
  another choice."""
  if choice not in REPRESENTATIONS:
    raise ValueError(f'representation {choice!r}: not one of {", ".join(REPRESENTATIONS)}')
  if choice == 'auto':
    return spec.partition(':')[0] in init_spec.PRETRAINING
  return choice == 'patch_mean'


def checkpoint_representation(spec: str, model: ModelSpec, choice: str = 'auto') -> Callable:
  """The representation few-shot reads of a checkpoint loaded from init `spec` (FORMAT:PATH).

  choice 'auto': as the trainer of that checkpoint's objective reads it, so the two paths give
  one number. A pretraining run's encoder (mpp:, mae:, simmim:): the mean of its patch tokens,
  the `Objective.representation` of those objectives (`make_patch_mean_fn`, which they call). A
  classifier (supervised: and the published formats): the pooled token, pre_logits when
  present (`make_representation_fn`). 'pooled' and 'patch_mean' read those two whatever the
  format: an MAE encoder exported to hf: reads as its workdir did with 'patch_mean'. `model`
  is the checkpoint's (vit.init_spec.load); the params given to the result have no 'head'.
  ValueError for another choice, or 'patch_mean' of a model without a class token.
  """
  if reads_patch_mean(spec, choice):
    return make_patch_mean_fn(model)
  return make_representation_fn(model)


def describe_representation(spec: str, model: ModelSpec, choice: str = 'auto') -> dict:
  """What `checkpoint_representation(spec, model, choice)` reads, in words, for the CLI's
  JSON: 'representation' (e.g. 'class token', 'mean of patch tokens') and 'representation_from'
  (the spec's format and why it reads that one). The same weights score differently on the
  class token and on the patch mean, so a result that does not say which cannot be compared."""
  fmt = spec.partition(':')[0]
  if choice != 'auto':
    what = 'mean of patch tokens' if reads_patch_mean(spec, choice) else _pooled_words(model)
    return {'representation': what,
            'representation_from': f'{fmt}: spec, --representation={choice}'}
  if fmt in init_spec.PRETRAINING:
    return {'representation': 'mean of patch tokens',
            'representation_from': f'{fmt}: spec, {init_spec.PRETRAINING[fmt][0]} encoder, as '
                                   'its trainer evaluates it'}
  return {'representation': _pooled_words(model),
          'representation_from': f'{fmt}: spec, a classifier\'s pooled features (classifier '
                                 f'{model.classifier!r}), as supervised training evaluates them'}


def _pooled_words(model: ModelSpec) -> str:
  # make_representation_fn: the model's own pooling ('unpooled' read as the class token).
  pooled = 'mean of patch tokens' if model.classifier == 'gap' else 'class token'
  return f'pre_logits of the {pooled}' if model.representation_size else pooled


def _open_split(config: ml_collections.ConfigDict, key: str, split: str):
  """pipeline.make_source of the few-shot split that config key `key` names; a split the data
  source lacks is refused naming `key` (make_source names data.train_split or data.eval_split,
  which the user did not set: fewshot.train_split='bogus' read 'config.data.eval_split')."""
  try:
    return pipeline.make_source(config, split)
  except ConfigError as e:
    if e.key in ('data.train_split', 'data.eval_split') and e.value == split:
      raise ConfigError(key, split, e.problem) from None
    raise


class FewShotEvaluator:
  """Periodic few-shot evaluation on frozen features; `evaluate(params)` -> metrics.

  `representation(params, images)` gives features of uint8 images; `params_fn` picks the
  ViT tree out of a trainer's params (MPP keeps it under 'backbone'). With
  config.data.skip_bad_records, `skipped` counts the bad records left out: 'train' when the
  shots are drawn, 'test' at each `evaluate`.
  """

  def __init__(self, config: ml_collections.ConfigDict, representation: Callable, mesh, *,
               train_source=None, test_source=None, params_fn: Callable = lambda p: p,
               name: str = 'fewshot'):
    fs = config.fewshot
    shots = tuple(fs.shots)
    if not shots or any(not isinstance(k, int) or k < 1 for k in shots):
      raise ConfigError('fewshot.shots', shots, 'must be positive integers')
    if any(l2 <= 0 for l2 in (fs.l2_reg, *fs.l2_regs)):
      raise ConfigError('fewshot.l2_regs', fs.l2_regs, 'L2 strengths must be > 0')
    if fs.max_test is not None and (not isinstance(fs.max_test, int) or fs.max_test < 0):
      raise ConfigError('fewshot.max_test', fs.max_test, 'must be an integer >= 0 (0: all)')
    self.name, self.config, self.mesh, self.params_fn = name, config, mesh, params_fn
    self.shots, self.l2_reg, self.l2_regs = shots, float(fs.l2_reg), tuple(fs.l2_regs)
    # What `evaluate` returns, known before training (vit.training.loop checks best_metric).
    self.metric_names = tuple(name for k in shots for name in (
        f'{k}shot', *(f'{k}shot_l2={l2:g}' for l2 in self.l2_regs)))
    train_source = train_source or _open_split(config, 'fewshot.train_split', fs.train_split)
    test_source = test_source or (
        _open_split(config, 'fewshot.test_split', fs.test_split) if fs.test_split
        else pipeline.make_source(config, config.data.eval_split))
    bad_shots: list[str] = []
    per_class = select_shots(train_source, max(shots), fs.seed,
                             usable=_passing_over_bad_records(config, train_source, bad_shots))
    self.skipped = {'train': len(bad_shots), 'test': 0}
    names = getattr(train_source, 'class_names', None)
    # A class without training images (prepare keeps empty class folders) is short too: left
    # out, it would shift every later class's rows.
    everyone = range(len(names) if names else max(per_class) + 1)
    short = {c: len(per_class.get(c, ())) for c in everyone
             if len(per_class.get(c, ())) < max(shots)}
    if short:
      listed = ', '.join(f'{names[c] if names else c} ({n})' for c, n in short.items())
      bad = (f' ({counted(len(bad_shots), "bad record", "bad records")} of it skipped)'
             if bad_shots else '')
      raise ConfigError('fewshot.shots', shots, f'split {fs.train_split!r}{bad} has fewer than '
                        f'{max(shots)} examples of {len(short)} class{"es" * (len(short) > 1)}: '
                        f'{listed}')
    self.num_classes = len(everyone)
    # Class-major order; the k-shot set is the first k of every class.
    self.train_order = [i for c in sorted(per_class) for i in per_class[c]]
    self.train_labels = np.repeat(sorted(per_class), max(shots))
    test = np.arange(len(test_source))
    if fs.max_test and len(test) > fs.max_test:
      test = np.sort(np.random.default_rng(fs.seed + 1).choice(test, fs.max_test, replace=False))
    self.train_source = _Subset(train_source, self.train_order)
    self.test_source = _Subset(test_source, test)
    self._features = jax.jit(representation)

  def evaluate(self, params) -> dict:
    params = self.params_fn(params)
    train_x, train_y = embedding.embed(self.config, self._features, params,
                                      self.train_source, self.mesh)
    test_x, test_y = embedding.embed(self.config, self._features, params,
                                    self.test_source, self.mesh)
    self.skipped['test'] = len(self.test_source) - len(test_y)  # Dropped by the pipeline.
    results = {}
    per_class = max(self.shots)
    for k in self.shots:
      rows = (np.arange(self.num_classes)[:, None] * per_class + np.arange(k)[None]).ravel()
      solver = LeastSquares(train_x[rows], train_y[rows], self.num_classes)
      results[f'{k}shot'] = solver.accuracy(test_x, test_y, self.l2_reg)
      for l2 in self.l2_regs:
        results[f'{k}shot_l2={l2:g}'] = solver.accuracy(test_x, test_y, l2)
    return results


def from_config(config: ml_collections.ConfigDict, model: ModelSpec, mesh, **kw
                ) -> Optional[FewShotEvaluator]:
  """The evaluator config.fewshot asks for (None unless fewshot.enabled)."""
  if not config.fewshot.enabled:
    return None
  return FewShotEvaluator(config, make_representation_fn(model), mesh, **kw)


# ----------------------------------------------------------------------------------------
# CLI

def _define_flags():
  flags.DEFINE_string('init', None,
                      'mpp:DIR | mae:DIR | simmim:DIR | supervised:DIR | vit_jax:FILE.npz | '
                      'hf:DIR | timm:DIR',
                      required=True)
  flags.DEFINE_string('dataset', 'fashion_mnist', "data source: 'fashion_mnist', "
                      "'tfds:NAME' or 'array_record:DIR'")
  flags.DEFINE_string('data_dir', None, 'config.data.data_dir: the folder of the fashion_mnist '
                      f'IDX files (default: {fashion_mnist.DEFAULT_DIR}) or the TFDS '
                      'data_dir of tfds:NAME; array_record:DIR names its own')
  flags.DEFINE_string('train_split', 'train', 'split the shots are drawn from')
  flags.DEFINE_string('test_split', 'test', 'split the accuracy is measured on')
  flags.DEFINE_list('shots', ['1', '5', '10', '25'], 'examples per class')
  flags.DEFINE_list('l2_regs', [str(2.0 ** k) for k in range(-4, 13, 2)],
                    'L2 strengths to report')
  flags.DEFINE_float('l2_reg', 2.0 ** 10, 'the L2 strength of the headline numbers')
  flags.DEFINE_integer('seed', 0, 'seed of the shot sampling')
  flags.DEFINE_integer('max_test', 10000, 'evaluate on at most this many test examples (a '
                       'seeded subset; 0: all of them, as config.fewshot.max_test)')
  flags.DEFINE_integer('image_size', None, 'resolution (default: the checkpoint\'s)')
  flags.DEFINE_integer('batch_size', 256, 'images per forward pass')
  flags.DEFINE_bool('skip_bad_records', False, 'skip the records of --dataset whose image does '
                    'not decode (as config.data.skip_bad_records): another shot of its class '
                    'is drawn for a bad one, a bad test example is left out of the accuracy, '
                    'and the JSON counts them (skipped_bad_records); off, the first bad record '
                    'stops the evaluation, named')
  flags.DEFINE_string('output', None, 'also write the JSON printed (the results, the '
                      'checkpoint, the data and the representation read) here')
  flags.DEFINE_enum('representation', 'auto', REPRESENTATIONS,
                    "features read: 'auto' as the checkpoint's trainer evaluates it (the patch "
                    "mean of an mpp:, mae: or simmim: encoder, a classifier's pooled token); "
                    "'pooled' (class token, or GAP, pre_logits when present) or 'patch_mean' "
                    'whatever the format (an exported encoder scores as its workdir did)')
  return flags.FLAGS


def _check_flags(flags_) -> None:
  """One line naming the flag and its value for a bad number, before anything is loaded."""
  for flag, convert in (('shots', int), ('l2_regs', float)):
    values = getattr(flags_, flag)
    for value in values:
      try:
        ok = convert(value) > 0
      except ValueError:
        ok = False
      if not ok:
        raise UserError(f'--{flag}={",".join(values)}: {value!r} is not a positive '
                        f'{"integer" if convert is int else "number"}')
  if flags_.l2_reg <= 0:
    raise UserError(f'--l2_reg={flags_.l2_reg:g}: must be > 0')
  if flags_.max_test < 0:
    raise UserError(f'--max_test={flags_.max_test}: must be an integer >= 0 (test examples; '
                    '0: all)')
  if flags_.batch_size < 1 or flags_.batch_size % jax.device_count():
    raise UserError(f'--batch_size={flags_.batch_size}: must be a positive multiple of the '
                    f'{jax.device_count()} devices')
  if flags_.seed < 0:  # numpy's generators take any integer >= 0.
    raise UserError(f'--seed={flags_.seed}: must be an integer >= 0')
  if flags_.image_size is not None and flags_.image_size < 1:
    raise UserError(f'--image_size={flags_.image_size}: must be a positive integer (default: '
                    'the checkpoint\'s)')


def _check_output(flags_) -> None:
  """--output that cannot be written, inside a run's checkpoints folder, or a file of the --init
  checkpoint (init_spec.refuse_writing_over: `--init vit_jax:X.npz --output X.npz` replaced the
  checkpoint by the JSON): one line before anything is read or evaluated (it was found after,
  or not at all)."""
  reason = flags_.output and atomic_write.unwritable(flags_.output)
  if reason:
    raise UserError(f'--output {flags_.output}: not writable ({reason}); nothing was evaluated')
  checkpoints.refuse_inside_checkpoints(flags_.output, 'write it elsewhere',
                                       os.path.basename(flags_.output or ''), flag='--output')
  init_spec.refuse_writing_over(flags_.init, flags_.output, flag='--output')


def _check_image_size(flags_, ckpt) -> None:
  """--image_size that the checkpoint's patches do not divide: one line (it was cut to whole
  patches without a word, as a smaller one failed to resize the position embeddings)."""
  stride = init_spec.patch_stride(ckpt.model)
  if flags_.image_size and flags_.image_size % stride:
    raise UserError(f'--image_size={flags_.image_size}: not a multiple of the model\'s patch '
                    f'stride {stride}')


def _cli_config(flags_, ckpt) -> ml_collections.ConfigDict:
  config = config_lib.defaults()
  config.image_size = flags_.image_size or ckpt.image_size
  config.eval_batch_size = flags_.batch_size
  config.data.source, config.data.data_dir = flags_.dataset, flags_.data_dir
  config.data.channels, config.data.eval_split = ckpt.channels, flags_.test_split
  config.data.skip_bad_records = flags_.skip_bad_records
  config.fewshot.shots = tuple(int(s) for s in flags_.shots)
  config.fewshot.l2_regs = tuple(float(s) for s in flags_.l2_regs)
  config.fewshot.update(l2_reg=flags_.l2_reg, seed=flags_.seed, max_test=flags_.max_test,
                        train_split=flags_.train_split, test_split=flags_.test_split)
  return config


def _representation_of_flags(flags_, model: ModelSpec) -> Callable:
  """checkpoint_representation of --init and --representation; its refusal of a model without
  a class token (make_patch_mean_fn) is one line naming the flag."""
  try:
    return checkpoint_representation(flags_.init, model, flags_.representation)
  except ValueError:  # The flag's enum allows no other choice: the patch mean of a GAP model.
    raise UserError(f'--representation=patch_mean: {flags_.init} has no class token '
                    f'(classifier {model.classifier!r}): its pooled features, the default, are '
                    'the mean of its patch tokens already') from None


_FLAGS_OF_KEYS = {'fewshot.shots': '--shots', 'fewshot.l2_regs': '--l2_regs',
                  'data.eval_split': '--test_split', 'data.train_split': '--train_split',
                  'fewshot.train_split': '--train_split', 'fewshot.test_split': '--test_split',
                  'data.source': '--dataset', 'data.data_dir': '--data_dir',
                  'data.skip_bad_records': '--skip_bad_records'}


def _named_by_flags(error: UserError) -> UserError:
  """`error` as a user of the CLI reads it: the flag they typed, not the config key it set
  (_FLAGS_OF_KEYS). A ConfigError of such a key becomes '--FLAG=VALUE: PROBLEM'; such a key in
  the prose becomes its flag too (the data layer says '... or set config.data.data_dir', which
  here is --data_dir; 'config.data.skip_bad_records=True' is --skip_bad_records, a boolean
  flag). Anything else is `error` as it is."""
  flag = _FLAGS_OF_KEYS.get(getattr(error, 'key', None))
  if flag is not None:
    value = ','.join(map(str, error.value)) if isinstance(error.value, tuple) else error.value
    text = f'{flag}={value}: {error.problem}'
  else:
    text = str(error)
  for key, named in _FLAGS_OF_KEYS.items():
    text = text.replace(f'config.{key}=True', named).replace(f'config.{key}', named)
  return error if text == str(error) else UserError(text)


def main(argv) -> None:
  """`python -m vit.evaluators.fewshot --init SPEC`: few-shot linear accuracy of the checkpoint's
  representation (`checkpoint_representation`) on --dataset, printed as JSON and also written
  to --output when given. A bad flag is one line naming it and exit status 2."""
  del argv
  flags_ = flags.FLAGS
  _check_flags(flags_)
  _check_output(flags_)
  ckpt = init_spec.load(flags_.init, image_size=flags_.image_size, size_flag='--image_size')
  init_spec.warn_if_unfinished(flags_.init, ckpt)
  _check_image_size(flags_, ckpt)
  config = _cli_config(flags_, ckpt)
  model = ckpt.model.replace(num_classes=None)
  target = init_spec.abstract_params(model, config.image_size, ckpt.channels, num_classes=0)
  grid = init_spec.grid_at(model, config.image_size)
  params = init_spec.adapt_params(ckpt.params, target, grid, drop=('head',), what=flags_.init)
  mesh = sharding.make_mesh(config.mesh)
  try:
    evaluator = FewShotEvaluator(
        config, _representation_of_flags(flags_, model), mesh)
  except UserError as e:
    raise _named_by_flags(e) from None
  try:
    results = evaluator.evaluate(jax.device_put(params))
  except BadRecordError as e:  # The data's fault, named with it: not the weights'.
    raise _named_by_flags(e) from None
  except UserError as e:  # Non-finite features (vit.evaluators.embedding): name the weights.
    raise UserError(f'--init {flags_.init}: {e}') from None
  record = dict(init=flags_.init, dataset=flags_.dataset, image_size=config.image_size,
                **describe_representation(flags_.init, model, flags_.representation),
                l2_reg=config.fewshot.l2_reg,
                results=results)
  if flags_.skip_bad_records:
    record['skipped_bad_records'] = dict(evaluator.skipped)
    skipped = sum(evaluator.skipped.values())
    if skipped:
      logger.warning('skipped %s of %s: %d of the training shots (replaced by others of the '
                     'same class), %d of the test examples (left out of the accuracy)',
                     counted(skipped, 'bad record', 'bad records'), flags_.dataset,
                     evaluator.skipped['train'], evaluator.skipped['test'])
  report(record, flags_.output)


def report(record: dict, output: str | None) -> None:
  """Writes `record` as indented JSON to `output` (when given, replacing it only when complete:
  vit.atomic_write), then prints it. The file first: printing into a pipe its reader closed
  (`... | head`) raises BrokenPipeError, which left no --output file after the whole evaluation."""
  text = json.dumps(record, indent=1) + '\n'
  if output:
    with atomic_write.file(output) as partial, open(partial, 'w') as f:
      f.write(text)
  sys.stdout.write(text)


if __name__ == '__main__':
  from vit import cli
  _define_flags()
  cli.run(main)
