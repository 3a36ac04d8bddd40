"""vit.data.decoding: every PIL mode to uint8 by its stated rule, and EXIF orientation.

Files are made by PIL itself, in the formats that hold each mode."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vit.data import decoding, transforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def saved(image: Image.Image, fmt: str, **kwargs) -> bytes:
  out = io.BytesIO()
  image.save(out, format=fmt, **kwargs)
  return out.getvalue()


def opened_mode(data: bytes) -> str:
  with Image.open(io.BytesIO(data)) as pil:
    return pil.mode


def test_a_very_large_image_decodes_without_a_warning_and_a_larger_one_is_named():
  """Over PIL's MAX_IMAGE_PIXELS (89M pixels) an image printed Python's two-line
  DecompressionBombWarning, PIL's source file and line included, into prepare's output. In a
  child: pytest installs warning filters of its own in front of the module's."""
  child = """
import io, sys
from PIL import Image
from vit.data import decoding
Image.MAX_IMAGE_PIXELS = 100  # 12x12 is over it, under twice it; 15x15 over twice it.
def png(side):
  out = io.BytesIO()
  Image.new('L', (side, side)).save(out, format='PNG')
  return out.getvalue()
print(decoding.decode(png(12)).shape)
try:
  decoding.decode(png(15))
except decoding.DecodeError as e:
  print(e)
"""
  env = dict(os.environ, PYTHONPATH=ROOT)
  result = subprocess.run([sys.executable, '-c', child], env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0 and result.stderr == '', result.stderr
  assert result.stdout.splitlines() == [
      '(12, 12, 1)', 'Image size (225 pixels) exceeds limit of 200 pixels, could be '
      'decompression bomb DOS attack.']


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
  k = np.arange(256, dtype=np.uint16).reshape(16, 16)
  png = saved(Image.fromarray(k * 257), 'PNG')
  assert opened_mode(png) == 'I;16'
  np.testing.assert_array_equal(decoding.decode(png), k[..., None].astype(np.uint8))
  big_endian = saved(Image.frombytes('I;16B', (16, 16), (k * 257).astype('>u2').tobytes()),
                     'TIFF')
  assert opened_mode(big_endian) == 'I;16B'
  np.testing.assert_array_equal(decoding.decode(big_endian)[..., 0], k)
  # Between the k * 257 steps values round to the nearest: 128 -> 0.498 -> 0, 129 -> 1.
  between = saved(Image.fromarray(np.array([[128, 129, 65535]], np.uint16)), 'PNG')
  np.testing.assert_array_equal(decoding.decode(between)[..., 0], [[0, 1, 255]])


def test_pgm_sixteen_bit_opens_as_I_and_takes_the_sixteen_bit_range():
  pgm = b'P5\n3 1\n65535\n' + np.array([3 * 257, 65535, 0], '>u2').tobytes()
  assert opened_mode(pgm) == 'I'
  np.testing.assert_array_equal(decoding.decode(pgm)[..., 0], [[3, 255, 0]])
  beyond = Image.fromarray(np.array([[-5, 100 * 257, 70000]], np.int32))
  assert beyond.mode == 'I'
  np.testing.assert_array_equal(decoding.to_array(beyond)[..., 0], [[0, 100, 255]])


def test_float_takes_zero_to_one():
  tiff = saved(Image.fromarray(np.array([[0.5, 1.0, 2.0, -1.0]], np.float32)), 'TIFF')
  assert opened_mode(tiff) == 'F'
  np.testing.assert_array_equal(decoding.decode(tiff)[..., 0], [[128, 255, 255, 0]])
  nan = saved(Image.fromarray(np.array([[np.nan]], np.float32)), 'TIFF')
  with pytest.raises(decoding.DecodeError, match='NaN or infinite'):
    decoding.decode(nan)


def test_bilevel_greyscale_and_rgb():
  bits = saved(Image.fromarray(np.array([[0, 255]], np.uint8)).convert('1'), 'PNG')
  assert opened_mode(bits) == '1'
  np.testing.assert_array_equal(decoding.decode(bits), [[[0], [255]]])
  rgb = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
  np.testing.assert_array_equal(decoding.decode(saved(Image.fromarray(rgb), 'PNG')), rgb)


def test_alpha_is_composited_on_white():
  rgba = np.array([[[200, 100, 0, 255], [200, 100, 0, 0], [200, 100, 0, 51]]], np.uint8)
  # Alpha 51 = 20%: 0.2 * c + 0.8 * 255.
  want = np.array([[[200, 100, 0], [255, 255, 255], [244, 224, 204]]], np.uint8)
  np.testing.assert_array_equal(decoding.decode(saved(Image.fromarray(rgba), 'PNG')), want)
  la = saved(Image.fromarray(rgba[..., [0, 3]], 'LA'), 'PNG')
  assert opened_mode(la) == 'LA'
  np.testing.assert_array_equal(decoding.decode(la), want[..., :1])
  premultiplied = Image.fromarray(rgba).convert('RGBa')
  np.testing.assert_array_equal(decoding.to_array(premultiplied), want)


def test_palette_with_and_without_a_transparent_colour():
  palette = Image.fromarray(np.array([[0, 1, 2]], np.uint8), 'P')
  palette.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
  plain = saved(palette, 'PNG')
  assert opened_mode(plain) == 'P'
  np.testing.assert_array_equal(decoding.decode(plain),
                                [[[10, 20, 30], [40, 50, 60], [70, 80, 90]]])
  for fmt in ('PNG', 'GIF'):
    with_transparency = saved(palette, fmt, transparency=1)
    assert opened_mode(with_transparency) == 'P'
    np.testing.assert_array_equal(decoding.decode(with_transparency),
                                  [[[10, 20, 30], [255, 255, 255], [70, 80, 90]]])


def test_transparent_grey_level_of_a_greyscale_png():
  png = saved(Image.fromarray(np.array([[7, 8]], np.uint8)), 'PNG', transparency=7)
  assert opened_mode(png) == 'L'
  np.testing.assert_array_equal(decoding.decode(png), [[[255], [8]]])
  sixteen = saved(Image.fromarray(np.array([[7 * 257, 8 * 257]], np.uint16)), 'PNG',
                  transparency=7 * 257)
  assert opened_mode(sixteen) == 'I;16'  # The same rule: the transparent grey becomes white.
  np.testing.assert_array_equal(decoding.decode(sixteen), [[[255], [8]]])


def test_cmyk_and_ycbcr_become_rgb():
  cmyk = saved(Image.new('CMYK', (2, 1), (255, 0, 0, 0)), 'TIFF')
  assert opened_mode(cmyk) == 'CMYK'
  np.testing.assert_array_equal(decoding.decode(cmyk), [[[0, 255, 255]] * 2])
  jpeg = saved(Image.new('CMYK', (8, 8), (0, 0, 0, 128)), 'JPEG', quality=100)
  assert opened_mode(jpeg) == 'CMYK'
  np.testing.assert_allclose(decoding.decode(jpeg).astype(int), 127, atol=1)  # 255 - K.
  ycbcr = saved(Image.new('YCbCr', (2, 1), (100, 128, 128)), 'TIFF')
  assert opened_mode(ycbcr) == 'YCbCr'
  np.testing.assert_array_equal(decoding.decode(ycbcr), [[[100, 100, 100]] * 2])


def test_exif_orientation_is_applied():
  # Stored 48 wide and 32 high, left half red, right half blue; Orientation=6 means "rotate 90
  # degrees clockwise to display": 32 wide and 48 high, red on top.
  stored = np.zeros((32, 48, 3), np.uint8)
  stored[:, :24, 0] = 255
  stored[:, 24:, 2] = 255
  exif = Image.Exif()
  exif[0x0112] = 6
  jpeg = saved(Image.fromarray(stored), 'JPEG', exif=exif, quality=95)
  image = decoding.decode(jpeg)
  assert image.shape == (48, 32, 3)
  assert image[5, 16, 0] > 200 and image[5, 16, 2] < 50  # Top: red.
  assert image[42, 16, 2] > 200 and image[42, 16, 0] < 50  # Bottom: blue.
  png = saved(Image.fromarray(stored), 'PNG', exif=exif)
  np.testing.assert_array_equal(decoding.decode(png), np.rot90(stored, k=-1))
  with Image.open(io.BytesIO(png)) as pil:
    assert not decoding.is_plain(pil)  # prepare must not store these bytes as they are.


def test_the_training_decoder_is_this_one():
  k = np.arange(6, dtype=np.uint16).reshape(2, 3)
  png = saved(Image.fromarray(k * 257), 'PNG')
  np.testing.assert_array_equal(transforms.decode_image(png)[..., 0], k)
