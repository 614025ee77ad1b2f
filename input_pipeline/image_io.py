"""Safe loading of user image files: every odd file is normalised to uint8 RGB or rejected.

Folders of real documents hold whatever scanners and phones wrote: CMYK JPEGs, 16-bit PNG/TIFF,
RGBA/palette screenshots, EXIF-rotated photos, truncated uploads, zero-byte files, text files with
an image extension and the odd 20k x 30k scan. Pillow reads all of them; this file decides, once,
what each becomes, so that the tf.data graph only ever sees valid uint8 HxWx3 arrays.

`inspect_image` is the start-of-run check (a reason string for every file that must be skipped);
`load_rgb` is what the pipeline calls per example.
"""
import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from errors import DataError  # noqa: F401  (raised by every input_pipeline source)
import file_io


# A truncated file must be an error, never a half-grey image silently trained on.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _open(data, max_pixels):
  """Opens encoded bytes; refuses decompression bombs before any pixel is decoded."""
  if not data:
    raise ValueError('zero-byte file')
  with warnings.catch_warnings():
    # Pillow only warns between MAX_IMAGE_PIXELS and 2x; our own limit below decides.
    warnings.simplefilter('ignore', Image.DecompressionBombWarning)
    try:
      img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
      raise ValueError(f'too large (decompression bomb): {e}') from None
    except Exception as e:  # Pillow raises many types for non-images.
      raise ValueError(f'not a readable image ({type(e).__name__})') from None
  w, h = img.size
  if w * h > max_pixels:
    raise ValueError(f'too large: {w}x{h} = {w * h} px > max_pixels={max_pixels}')
  if w < 1 or h < 1:
    raise ValueError(f'empty image {w}x{h}')
  return img


def _to_rgb(img):
  """Any Pillow mode -> 'RGB'. Transparent areas become white (paper), 16-bit is rescaled."""
  if img.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
    a = np.asarray(img, dtype=np.float32)
    hi = 65535.0 if img.mode.startswith('I;16') or a.max() > 255 else 255.0
    a = np.clip(a * (255.0 / hi), 0, 255).astype(np.uint8)
    img = Image.fromarray(a, 'L')
  if img.mode == 'P':
    img = img.convert('RGBA')
  if img.mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa'):
    img = img.convert('RGBA')
    paper = Image.new('RGBA', img.size, (255, 255, 255, 255))
    img = Image.alpha_composite(paper, img)
  # CMYK, YCbCr, LAB, L, 1, RGBX ... Pillow's own conversion is right for all of them.
  return img.convert('RGB')


def load_rgb(data, *, max_side=0, max_pixels=100_000_000):
  """Encoded image bytes -> uint8 [H, W, 3], upright, longest side <= max_side (0: as is).

  Raises ValueError with a one-line reason for anything that cannot be used.
  """
  img = _open(data, max_pixels)
  if max_side and img.format == 'JPEG':
    # JPEG can decode at 1/2, 1/4, 1/8 scale directly: large photos cost a fraction to read.
    # The draft size is for the *stored* orientation; exif rotation only swaps sides.
    img.draft('RGB', (max_side, max_side))
  try:
    img = ImageOps.exif_transpose(img)
    img = _to_rgb(img)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f'corrupt or truncated ({type(e).__name__}: {str(e)[:80]})') from None
  if max_side and max(img.size) > max_side:
    img.thumbnail((max_side, max_side), Image.BILINEAR)
  return np.asarray(img, dtype=np.uint8)


def stretch_to_square(rgb, size):
  """uint8 [H, W, 3] -> uint8 [size, size, 3], the whole image resized (no crop): the one resize
  that evaluation (evaluation/labelled_folder.py) and inference (inference/images.py) share."""
  im = Image.fromarray(rgb).resize((size, size), Image.BILINEAR, reducing_gap=3.0)
  return np.asarray(im, dtype=np.uint8)


def inspect_image(path, *, max_pixels=100_000_000, full=True):
  """Returns None if `path` is usable, else the reason it is skipped.

  full=True decodes the whole file (catches truncation, at the cost of one decode per file at
  start); full=False only parses the header.
  """
  try:
    data = file_io.read_bytes(path)
  except OSError as e:
    return f'unreadable ({e.strerror})'
  except Exception as e:  # pylint: disable=broad-except  (tf.errors.* for a gs:// path)
    return f'unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ""})'
  try:
    if full:
      load_rgb(data, max_side=256, max_pixels=max_pixels)
    else:
      _open(data, max_pixels)
  except ValueError as e:
    return str(e)
  return None
