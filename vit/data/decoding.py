"""Image files -> uint8 pixels: the one decoder of predict, prepare, inspect and training.

Every image, whatever its mode, becomes uint8 [H, W, 1] (greyscale) or uint8 [H, W, 3] (colour),
upright (the first frame of an animation or a multi-page file). The rules, by the mode PIL
opens the file in:

| PIL mode | result | rule |
|---|---|---|
| `L`, `RGB` | 1, 3 channels | unchanged |
| `1` | 1 | 0 -> 0, 1 -> 255 |
| `I;16`, `I;16L`, `I;16B`, `I;16N` (16-bit PNG, TIFF) | 1 | v / 257, rounded: k * 257 -> k |
| `I` (32-bit int; 16-bit PGM/PPM) | 1 | as 16-bit: clipped to [0, 65535], then v / 257, rounded |
| `F` (32-bit float TIFF) | 1 | [0, 1] -> [0, 255]: clipped, x * 255, rounded; NaN, inf: error |
| `LA`, `La` | 1 | alpha composited on white |
| `RGBA`, `RGBa`, `PA` | 3 | alpha composited on white |
| `P` | 3 | the palette's colours |
| `L`, `RGB`, `P` with a transparent colour (PNG tRNS, GIF) | 1, 3, 3 | as LA / RGBA |
| `I;16`, `I` with a transparent grey (16-bit PNG tRNS) | 1 | that grey white, others as above |
| `CMYK`, `YCbCr`, `LAB`, `HSV`, `RGBX` | 3 | PIL's conversion to RGB |

Why these rules:
- PIL's own `convert('L')` clips 16-bit and 32-bit values to 255, so a 16-bit image becomes
  white; scaling keeps the picture, and maps an 8-bit value widened to 16 bits (k * 257, what
  image tools write) back to k. Pillow opens 16-bit PGM/PPM as `I`, hence the 16-bit range for
  `I`. Float images use scikit-image's convention, [0, 1].
- Transparent pixels often hold arbitrary colours; dropping alpha would show them. White is
  what a browser or document viewer shows behind a transparent icon, logo or product cut-out,
  the images that come with alpha. out = round((c * a + 255 * (255 - a)) / 255).
- Greyscale stays one channel; `transforms.ToChannels` makes three when the model takes three
  (a palette image is colour even when its palette is grey: converting back to one channel
  gives the same values).
- Embedded ICC colour profiles are not applied: values are taken as sRGB, as PIL, TF and
  torchvision decoders do.

The EXIF orientation (tag 0x0112; also the PNG eXIf chunk and XMP tiff:Orientation) is applied
first, with `PIL.ImageOps.exif_transpose`: a phone photo stored 48x32 with Orientation=6
decodes as 32x48, as every viewer shows it.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from vit.errors import UserError, require_file

# What predict, inspect and prepare pick up in a folder (by name; the content decides the format).
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
BACKGROUND = 255  # Behind transparent pixels: white (see the module docstring).

_SIXTEEN_BIT = ('I;16', 'I;16L', 'I;16B', 'I;16N')
_WITH_ALPHA = {'LA': 'LA', 'La': 'LA', 'RGBA': 'RGBA', 'RGBa': 'RGBA', 'PA': 'RGBA'}
_TRANSPARENT_COLOUR = {'L': 'LA', 'RGB': 'RGBA', 'P': 'RGBA'}  # info['transparency'] -> mode
_TO_RGB = ('P', 'CMYK', 'YCbCr', 'LAB', 'HSV', 'RGBX')


# PIL warns of an image over MAX_IMAGE_PIXELS (89M) with Python's two-line warning, file and
# line of PIL's source included, amid a progress bar; such an image decodes like any other, and
# one over twice that is refused by name (DecompressionBombError, below).
warnings.filterwarnings('ignore', category=Image.DecompressionBombWarning)


class DecodeError(ValueError):
  """Bytes that are not an image this module can decode; the message says why."""


def decode(data: bytes) -> np.ndarray:
  """Encoded bytes (any format PIL reads) -> uint8 [H, W, 1 or 3], upright.

  Raises DecodeError (unknown format, truncated or damaged data, an unsupported mode, float
  pixels that are not finite).
  """
  try:
    with Image.open(io.BytesIO(data)) as pil:
      pil.load()  # Decodes now, so a truncated file fails here and not later.
      return to_array(pil)
  except (OSError, ValueError, TypeError, Image.DecompressionBombError) as e:
    if isinstance(e, DecodeError):
      raise
    raise DecodeError(reason(e)) from None


def is_hidden(name: str) -> bool:
  """Dot-files and folders (.ipynb_checkpoints, .DS_Store, macOS' ._NAME.jpg resource forks)
  and the __MACOSX folder of zip archives: tool metadata, never images or classes."""
  return name.startswith('.') or name == '__MACOSX'


def images_in(directory: str) -> tuple[list[str], list[str]]:
  """(sorted names of the image files directly in `directory`, names of hidden entries)."""
  names = sorted(os.listdir(directory))
  hidden = [n for n in names if is_hidden(n)]
  return [n for n in names if not is_hidden(n) and n.lower().endswith(IMAGE_SUFFIXES)], hidden


def read_bytes(path: str, hint: str = '') -> bytes:
  """The file's bytes; raises UserError '{path}: cannot read the file ({why}){hint}'."""
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise UserError(f'{path}: cannot read the file ({e.strerror or e}){hint}') from None


def read_file(path: str, hint: str = '') -> np.ndarray:
  """`decode` of a file; raises UserError '{path}: cannot decode the image ({why}){hint}'."""
  data = read_bytes(path, hint)
  try:
    return decode(data)
  except DecodeError as e:
    raise UserError(f'{path}: cannot decode the image ({e}){hint}') from None


def read_npy(path: str, label: str) -> np.ndarray:
  """Images stored as an array: uint8 [N, H, W, C] (C 1 or 3) from a .npy of uint8 [N, H, W, C]
  or [N, H, W] (greyscale), what predict and inspect take for --images.

  Raises UserError '{label}: ...' (label names the flag and the file) for a missing file, one
  that is not a .npy or not readable as one, another dtype, no images, and a [H, W, C]-like
  shape, which could be one colour image or several greyscale ones: refused, not guessed.
  """
  require_file(path, label, 'a .npy file')
  if not path.endswith('.npy'):
    raise UserError(f'{label}: expected a .npy of uint8 images or a directory')
  try:
    images = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise UserError(f'{label}: not a readable .npy array ({e})') from None
  if images.dtype != np.uint8:
    raise UserError(f'{label}: dtype {images.dtype}; expected uint8 pixels in [0, 255]')
  if images.ndim in (3, 4) and len(images) == 0:
    raise UserError(f'{label}: holds no images (shape {images.shape})')
  if images.ndim == 3 and images.shape[-1] in (1, 3, 4):
    raise UserError(f'{label}: shape {images.shape} is ambiguous (one [H, W, C] image '
                    f'or {images.shape[0]} greyscale images {images.shape[1]} wide?); pass one '
                    f'image as [1, H, W, C] (np.expand_dims(x, 0)), greyscale ones as [B, H, W, 1]')
  if images.ndim == 3:  # [N, H, W]: greyscale without a channel axis.
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or 0 in images.shape:
    # Name the greyscale layout too: a single [H, W] image was told only of [N, H, W, C].
    raise UserError(f'{label}: shape {images.shape}; expected [N, H, W, C] with C 1 or 3, or '
                    '[N, H, W] greyscale (one image: np.expand_dims(x, 0))')
  return images


def to_array(pil: Image.Image) -> np.ndarray:
  """A loaded PIL image -> uint8 [H, W, 1 or 3] by the module's rules (orientation first)."""
  pil = upright(pil)
  mode = pil.mode
  if mode in _TRANSPARENT_COLOUR and 'transparency' in pil.info:
    pil = pil.convert(_TRANSPARENT_COLOUR[mode])
    mode = pil.mode
  if mode in ('L', 'RGB'):
    image = np.asarray(pil)
  elif mode == '1':
    image = np.asarray(pil, np.uint8) * np.uint8(255)
  elif mode in _SIXTEEN_BIT or mode == 'I':
    values = np.clip(np.asarray(pil).astype(np.int64), 0, 65535)
    image = ((values * 2 + 257) // 514).astype(np.uint8)  # round(v / 257), in integers.
    if isinstance(pil.info.get('transparency'), int):  # PIL has no 16-bit alpha mode to convert to.
      image[values == pil.info['transparency']] = BACKGROUND
  elif mode == 'F':
    values = np.asarray(pil, np.float32)
    if not np.isfinite(values).all():
      raise DecodeError('float pixels that are NaN or infinite')
    image = np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
  elif mode in _WITH_ALPHA:
    image = _composite(np.asarray(pil.convert(_WITH_ALPHA[mode])))
  elif mode in _TO_RGB:
    image = np.asarray(pil.convert('RGB'))
  else:
    raise DecodeError(f'PIL mode {mode!r} is not supported')
  return image[..., None] if image.ndim == 2 else image


def _composite(with_alpha: np.ndarray) -> np.ndarray:
  """uint8 [H, W, C + 1] (straight alpha last) -> uint8 [H, W, C] over BACKGROUND."""
  colour = with_alpha[..., :-1].astype(np.uint32)
  alpha = with_alpha[..., -1:].astype(np.uint32)
  return ((colour * alpha + BACKGROUND * (255 - alpha) + 127) // 255).astype(np.uint8)


def orientation(pil: Image.Image) -> int:
  """The EXIF orientation, 1 (as stored) to 8; 1 when the file has none."""
  value = pil.getexif().get(ExifTags.Base.Orientation, 1)
  return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(pil: Image.Image) -> Image.Image:
  """The image as viewers show it: `ImageOps.exif_transpose` when it has an orientation."""
  return ImageOps.exif_transpose(pil) if orientation(pil) != 1 else pil


def is_plain(pil: Image.Image) -> bool:
  """True when `to_array(pil)` is the file's pixels as stored: L or RGB, upright, opaque."""
  return (pil.mode in ('L', 'RGB') and 'transparency' not in pil.info
          and orientation(pil) == 1)


def reason(e: Exception) -> str:
  """PIL's error, readable: its message for an unknown format names a BytesIO object."""
  if isinstance(e, UnidentifiedImageError):
    return 'not a recognised image format'
  return str(e) or type(e).__name__
