"""vit/formats/vit_jax.py: every .npz layout the official code and big_vision write, read
without flags (a big_vision sincos2d file at its image size, FILE.npz@SIZE, or the reading
command's), with logits equal to the code that wrote them.

The fixtures in testdata/npz_layouts were made by that code (make_fixtures.py there names the
commits); `expected.npz` holds its inputs and logits.
"""
import os
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

from vit import config as config_lib, export, init_spec
from vit.errors import UserError
from vit.formats import vit_jax
from vit.formats.tree import flatten

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'testdata', 'npz_layouts')
TOL = 1e-5
LAYOUTS = ('vit_jax_published', 'vit_jax_today', 'big_vision_tok', 'big_vision_gap_scan',
           'big_vision_img')
# big_vision posemb='sincos2d': no position embedding in the file, so the size follows it.
SINCOS = ('big_vision_sincos_gap', 'big_vision_sincos_tok_scan')


def _expected():
  with np.load(os.path.join(DATA, 'expected.npz')) as f:
    return f['images'], {k.split('/')[1]: f[k] for k in f.files if k.startswith('logits/')}


def _logits(ckpt, images):
  net = config_lib.build_model(ckpt.model)
  return np.asarray(net.apply({'params': ckpt.params}, jnp.asarray(images), train=False))


@pytest.mark.parametrize('name', LAYOUTS + SINCOS)
def test_layout_gives_the_logits_of_the_code_that_wrote_it(name):
  images, want = _expected()
  size = '@16' if name in SINCOS else ''
  ckpt = init_spec.load(f'vit_jax:{os.path.join(DATA, name + ".npz")}{size}')
  assert ckpt.image_size == 16 and ckpt.model.num_layers == 2
  assert ckpt.model.posemb == ('sincos_2d' if name in SINCOS else 'learned_1d')
  assert np.abs(want[name]).max() > 0.5
  assert np.abs(_logits(ckpt, images) - want[name]).max() <= TOL


def test_sincos2d_reads_with_its_pooling_and_size(tmp_path):
  """big_vision's sincos2d files pool as its learned ones do: a class token is token pooling
  (its position entry none), none GAP, pre_logits the representation layer. The size after
  '@' is the model's; exported, it is the learned table at that grid, with the same logits."""
  gap = init_spec.load(f'vit_jax:{os.path.join(DATA, "big_vision_sincos_gap.npz")}@16')
  assert (gap.model.classifier, gap.model.representation_size) == ('gap', 16)
  assert 'posembed_input' not in gap.params['Transformer']
  tok = init_spec.load(f'vit_jax:{os.path.join(DATA, "big_vision_sincos_tok_scan.npz")}@24')
  assert tok.model.classifier == 'token' and tok.model.posemb == 'sincos_2d'
  assert tok.image_size == 24 and init_spec.grid_at(tok.model, tok.image_size) == (6, 6)
  export.export(f'vit_jax:{os.path.join(DATA, "big_vision_sincos_tok_scan.npz")}@16',
                'vit_jax', str(tmp_path / 'tok.npz'))
  table = init_spec.load(f'vit_jax:{tmp_path / "tok.npz"}')
  pe = table.params['Transformer']['posembed_input']['pos_embedding']
  assert table.model.posemb == 'learned_1d' and pe.shape == (1, 17, 16) and not pe[0, 0].any()
  images, want = _expected()
  assert np.abs(_logits(table, images) - want['big_vision_sincos_tok_scan']).max() <= TOL


def test_sizes_after_the_file_name_are_checked(tmp_path):
  """A sincos2d file without '@SIZE' is one line saying how to give it; a size its patches do
  not divide, a suffix that is no size (@0, @-1, @abc), and '@SIZE' on a file whose learned
  table gives its size, are refused; a MAP head is named first."""
  sincos = os.path.join(DATA, 'big_vision_sincos_gap.npz')
  learned = os.path.join(DATA, 'big_vision_tok.npz')
  with np.load(sincos) as f:
    flat = {k[len('params/'):]: f[k] for k in f.files}
  np.savez(tmp_path / 'map.npz', **flat, **{'MAPHead_0/probe': np.zeros((1, 1, 16), np.float32)})
  cases = {
      f'vit_jax:{sincos}': (
          f'vit_jax:{sincos}: no pos_embedding: fixed sine-cosine position embeddings (big_vision'
          f' posemb="sincos2d"), which state no image size; give the size it was trained at '
          f'after the file name, vit_jax:{sincos}@SIZE (e.g. @224) (fine-tuning takes its '
          f'config.image_size, supervised.predict its --resolution)'),
      f'vit_jax:{sincos}@18': (f'init vit_jax:{sincos}@18: its input size 18px is not a multiple '
                               f'of the patch stride 4'),
      f'vit_jax:{learned}@16': (
          f'vit_jax:{learned}@16: @16 gives the image size of a file without position '
          f'embeddings (big_vision posemb="sincos2d"); this file\'s learned ones give its own: '
          f'drop @16'),
      f'vit_jax:{tmp_path / "map.npz"}@16': (f'vit_jax:{tmp_path / "map.npz"}: pools with a MAP '
                                             f'head (MAPHead_0, big_vision pool_type="map"), '
                                             f'which this ViT does not have'),
  }
  # @0 read as size 0 (an export wrote a 0x0 table, predict a traceback); @-1 and @abc as a
  # missing file.
  for bad in ('0', '-1', 'abc', ''):
    cases[f'vit_jax:{sincos}@{bad}'] = (
        f'vit_jax:{sincos}@{bad}: @{bad} is not an image size; give the size in pixels per side '
        f'after the file name, vit_jax:{sincos}@SIZE (e.g. @224)')
  for spec, message in cases.items():
    with pytest.raises(UserError) as e:
      init_spec.load(spec)
    assert str(e.value) == message


def test_a_sincos2d_file_takes_the_size_of_the_command_that_reads_it(tmp_path):
  """Without '@SIZE' a sincos2d file runs at the reading command's size (init_spec.load's
  image_size: fine-tuning's config.image_size, predict's --resolution), with the logits of
  '@SIZE'; '@SIZE' stays the size it states. Where the command has no size, vit.export and
  vit.inspect, one line names both ways; a command with a size flag names its flag."""
  sincos = os.path.join(DATA, 'big_vision_sincos_tok_scan.npz')
  images, want = _expected()
  ckpt = init_spec.load(f'vit_jax:{sincos}', image_size=16)
  assert ckpt.image_size == 16 and ckpt.model.posemb == 'sincos_2d'
  assert np.abs(_logits(ckpt, images) - want['big_vision_sincos_tok_scan']).max() <= TOL
  assert init_spec.load(f'vit_jax:{sincos}@24', image_size=16).image_size == 24
  with pytest.raises(UserError) as e:
    export.export(f'vit_jax:{sincos}', 'vit_jax', str(tmp_path / 'out.npz'))
  assert str(e.value) == (
      f'vit_jax:{sincos}: no pos_embedding: fixed sine-cosine position embeddings (big_vision '
      f'posemb="sincos2d"), which state no image size; give the size it was trained at after '
      f'the file name, vit_jax:{sincos}@SIZE (e.g. @224) (fine-tuning takes its '
      f'config.image_size, supervised.predict its --resolution)')
  assert not os.path.exists(tmp_path / 'out.npz')
  with pytest.raises(UserError, match=r'@SIZE \(e\.g\. @224\), or set --image_size$'):
    init_spec.load(f'vit_jax:{sincos}', size_flag='--image_size')


def test_layouts_read_as_the_published_one(tmp_path):
  """Read, then written: every layout becomes the published names, and reads back equal."""
  gap = init_spec.load(f'vit_jax:{os.path.join(DATA, "big_vision_gap_scan.npz")}')
  assert gap.model.classifier == 'gap' and gap.model.representation_size == 8
  tok = init_spec.load(f'vit_jax:{os.path.join(DATA, "big_vision_tok.npz")}')
  pe = tok.params['Transformer']['posembed_input']['pos_embedding']
  assert pe.shape == (1, 17, 16) and not pe[0, 0].any()  # The class token had no position.
  vit_jax.save(tok.params, str(tmp_path / 'm.npz'), tok.model)
  with np.load(tmp_path / 'm.npz') as f:
    assert 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel' in f.files
  back = vit_jax.load(str(tmp_path / 'm.npz')).params
  assert all(np.array_equal(a, flatten(back)[k]) for k, a in flatten(tok.params).items())


def test_bfloat16_arrays_are_read(tmp_path):
  """np.savez stores bfloat16 as 2-byte void; big_vision's recover_dtype reads it back."""
  import ml_dtypes
  with np.load(os.path.join(DATA, 'vit_jax_today.npz')) as f:
    flat = {k: f[k].astype(ml_dtypes.bfloat16) for k in f.files}
  np.savez(tmp_path / 'bf16.npz', **flat)
  params = vit_jax.load(str(tmp_path / 'bf16.npz')).params
  kernel = params['embedding']['kernel']
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel, flat['embedding/kernel'].astype(np.float32))


def test_unsupported_layouts_are_named(tmp_path):
  with np.load(os.path.join(DATA, 'big_vision_tok.npz')) as f:
    flat = {k[len('params/'):]: f[k] for k in f.files if k.startswith('params/')}
  cases = {
      'map': ({**flat, 'MAPHead_0/probe': np.zeros((1, 1, 16), np.float32)}, 'MAP head'),
      'grid': ({**flat, 'pos_embedding': np.zeros((1, 12, 16), np.float32)},
               'pos_embedding has 12 entries, not a square grid'),
      'sincos': ({k: v for k, v in flat.items() if k != 'pos_embedding'},
                 'no pos_embedding: fixed sine-cosine position embeddings'),
      'block': ({**flat, 'Transformer/encoderblock_0/Extra_0/w': np.zeros(2, np.float32)},
                'Transformer/encoderblock_0 holds Extra_0'),
      'blockless': ({k: v for k, v in flat.items() if 'encoderblock' not in k},
                    'lacks a ViT parameter'),
  }
  for name, (arrays, message) in cases.items():
    path = tmp_path / f'{name}.npz'
    np.savez(path, **arrays)
    with pytest.raises(UserError) as e:
      init_spec.load(f'vit_jax:{path}')
    assert str(e.value).startswith(f'vit_jax:{path}: ') and message in str(e.value)
    assert '\n' not in str(e.value)


def test_export_refuses_what_the_npz_cannot_hold(tmp_path):
  """Exact GELU and eps 1e-12 are not in the layout: the export says so instead of writing a
  file whose logits move (by ~1e-3 on these weights, checked)."""
  ckpt = init_spec.load(f'vit_jax:{os.path.join(DATA, "vit_jax_today.npz")}')
  hf_like = ckpt.model.replace(gelu_approximate=False, layer_norm_epsilon=1e-12)
  images, _ = _expected()
  moved = _logits(ckpt._replace(model=hf_like), images) - _logits(ckpt, images)
  assert np.abs(moved).max() > 1e-4
  with pytest.raises(UserError) as e:
    vit_jax.save(ckpt.params, str(tmp_path / 'm.npz'), hf_like)
  assert str(e.value) == ('--format vit_jax: the .npz layout cannot hold exact (erf) GELU, '
                          'LayerNorm epsilon 1e-12 (its readers assume tanh GELU, LayerNorm '
                          'epsilon 1e-6), so the logits would change')
  assert not (tmp_path / 'm.npz').exists()
  # What the layout can hold makes a round trip with equal logits.
  export.export(f'vit_jax:{os.path.join(DATA, "big_vision_img.npz")}', 'vit_jax',
                str(tmp_path / 'ok.npz'))
  again = init_spec.load(f'vit_jax:{tmp_path / "ok.npz"}')
  assert np.abs(_logits(again, images) - _expected()[1]['big_vision_img']).max() <= TOL


def _copy(path, compression, name='', damage=None):
  """vit_jax_published.npz copied to `path` with `compression` (ZIP_DEFLATED: as
  np.savez_compressed writes), its member `name` replaced by `damage(its bytes)`."""
  with zipfile.ZipFile(os.path.join(DATA, 'vit_jax_published.npz')) as src, \
      zipfile.ZipFile(path, 'w', compression) as out:
    for member in src.namelist():
      data = src.read(member)
      out.writestr(member, damage(data) if member == name else data)


def test_a_damaged_npz_is_one_line_naming_the_file(tmp_path):
  """A damaged member of an np.savez_compressed file raised zlib's traceback; a damaged array
  header was called 'holds pickled objects'; a huge shape in a header and a compression zipfile
  cannot read (Deflate64) were tracebacks. All are 'not a readable .npz file' now."""
  kernel = 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel.npy'
  compressed = tmp_path / 'compressed.npz'
  _copy(compressed, zipfile.ZIP_DEFLATED)
  raw = bytearray(compressed.read_bytes())
  with zipfile.ZipFile(compressed) as z:
    info = z.getinfo(kernel)
  start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
  raw[start + 10:start + 40] = bytes(30)  # Inside the member's deflate stream.
  compressed.write_bytes(bytes(raw))
  header = tmp_path / 'header.npz'
  _copy(header, zipfile.ZIP_STORED, kernel, lambda b: b.replace(b"'descr'", b"'dexcr'"))
  # A shape of 4e14 bytes in a header of the same length: numpy allocated it (MemoryError).
  huge = tmp_path / 'huge.npz'
  _copy(huge, zipfile.ZIP_STORED, kernel,
        lambda b: b.replace(b'(16, 32), }' + b' ' * 12, b'(10000000, 10000000), }'))
  # Deflate64 (method 9), which zipfile cannot read (NotImplementedError): a stored member
  # with its method patched in the local header and in the central directory.
  deflate64 = tmp_path / 'deflate64.npz'
  np.savez(deflate64, a=np.zeros(3, np.float32))
  raw = bytearray(deflate64.read_bytes())
  for offset in (8, raw.index(b'PK\x01\x02') + 10):
    raw[offset:offset + 2] = (9).to_bytes(2, 'little')
  deflate64.write_bytes(bytes(raw))
  for path in (compressed, header, huge, deflate64):
    with pytest.raises(UserError) as e:
      init_spec.load(f'vit_jax:{path}')
    assert str(e.value).startswith(f'vit_jax:{path}: not a readable .npz file (')
    assert 'pickled' not in str(e.value) and '\n' not in str(e.value)


def test_a_dense_layer_without_its_kernel_is_one_line_naming_it(tmp_path):
  """A head/bias without head/kernel (or pre_logits/bias without its kernel) was a KeyError
  traceback from the architecture's inference, in every reader of the file (vit.export,
  vit.inspect, fine-tuning); its width is the bias's now, and the missing kernel is named as
  any other missing array is."""
  # vit_jax's own file (testdata, make_fixtures.py): a 5-class head on width 16.
  with np.load(os.path.join(DATA, 'vit_jax_today.npz')) as f:
    flat = {k: f[k] for k in f.files}
  sizes = 'patches (4, 4), hidden 16, mlp 32, heads 2, layers 2'
  cases = {
      'nohead': ({k: v for k, v in flat.items() if k != 'head/kernel'}, sizes,
                 'head/kernel: missing (model wants (16, 5))'),
      'nopre': ({**flat, 'pre_logits/bias': np.zeros(32, np.float32)}, f'{sizes}, pre-logits 32',
                'head/kernel: checkpoint (16, 5) vs model (32, 5); '
                'pre_logits/kernel: missing (model wants (16, 32))'),
  }
  for name, (arrays, summary, problems) in cases.items():
    path = tmp_path / f'{name}.npz'
    np.savez(path, **arrays)
    line = (f'init vit_jax:{path}: parameters disagree with the architecture they imply '
            f'({summary}): {problems}')
    with pytest.raises(UserError) as e:
      init_spec.load(f'vit_jax:{path}')
    assert str(e.value) == line
    with pytest.raises(UserError) as e:
      export.export(f'vit_jax:{path}', 'hf', str(tmp_path / f'{name}_hf'))
    assert str(e.value) == line
    assert not (tmp_path / f'{name}_hf').exists()
