"""Reading what users hand the tools: image files, folders, globs, labels.csv, label names.

numpy + Pillow only, so the ONNX path (inference/onnx_model.py) runs without JAX.
Every bad input raises InputError with a one-line message; the CLI prints it and exits 1.
"""
import csv
import dataclasses
import glob
import hashlib
import os
import unicodedata

import numpy as np
from PIL import Image, ImageOps

from errors import InputError
from input_pipeline.image_io import load_rgb, stretch_to_square

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.pgm',
                    '.ppm')
# How a file becomes model input. Recorded in registries and exports: a registry built with one
# preprocessing must not be searched with embeddings made by another.
RESIZE_MODES = ('stretch', 'pad')


def default_preprocessing(image_size):
  # 'stretch' matches the training pipeline: the whole capture squashed to a square.
  return {'image_size': int(image_size), 'resize': 'stretch', 'color': 'RGB', 'dtype': 'uint8'}


def file_sha256(path):
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def decode_image(path):
  """One file -> uint8 [H, W, 3] at full size. Raises InputError on unreadable files."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
    # Full decode (no JPEG draft scaling), as the evaluation loader does: identical pixels.
    return load_rgb(data)
  except (OSError, ValueError) as e:
    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    # image_io's reasons may already say 'not a readable image (...)': say it once.
    if not why.startswith('not a readable image'):
      why = f'not a readable image ({why})'
    raise InputError(f'{path}: {why}') from None


def to_model_input(rgb, preprocessing):
  """uint8 [H, W, 3] -> uint8 [S, S, 3] per `preprocessing` ('stretch' or 'pad')."""
  size = preprocessing['image_size']
  if preprocessing.get('resize', 'stretch') == 'pad':
    im = ImageOps.pad(Image.fromarray(rgb), (size, size), Image.BILINEAR, color=(255, 255, 255))
    return np.asarray(im, dtype=np.uint8)
  return stretch_to_square(rgb, size)


def load_image(path, preprocessing):
  """One file -> uint8 [S, S, 3] per `preprocessing`. Raises InputError on unreadable files.

  Decoding and 'stretch' resizing are input_pipeline/image_io's load_rgb and stretch_to_square,
  the same as evaluation/labelled_folder.load_image, so registry scores and evaluation figures see
  the same pixels.
  """
  return to_model_input(decode_image(path), preprocessing)


@dataclasses.dataclass
class LoadedImages:
  images: np.ndarray        # uint8 [N, S, S, 3]
  paths: list               # N source paths
  skipped: list             # (path, reason) of files that could not be read
  infos: list = dataclasses.field(default_factory=list)  # per image, from `transform` (or None)


def load_images(paths, preprocessing, *, skip_unreadable=False, progress=None, transform=None,
                transform_for=None):
  """Loads many files. With skip_unreadable, bad files are counted in `skipped`, else raise.
  transform: None, or rgb -> (rgb, info) applied to each decoded photo before it is resized
  (the rectifying warp of inference/rectify.py); the infos are kept in order. transform_for:
  None, or path -> the transform for that file (None: `transform`)."""
  size = preprocessing['image_size']
  images, kept, skipped, infos = [], [], [], []
  for path in (progress(paths) if progress else paths):
    try:
      rgb = decode_image(path)
    except InputError as e:
      if not skip_unreadable:
        raise
      skipped.append((path, str(e)))
      continue
    info = None
    this = (transform_for(path) if transform_for else None) or transform
    if this is not None:
      rgb, info = this(rgb)
    images.append(to_model_input(rgb, preprocessing))
    kept.append(path)
    infos.append(info)
  arr = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
  return LoadedImages(arr, kept, skipped, infos)


def is_image_file(path):
  return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def expand_inputs(inputs):
  """Files, folders (recursive) and glob patterns -> sorted list of image paths."""
  paths = []
  for item in inputs:
    if os.path.isdir(item):
      found = sorted(os.path.join(d, f) for d, _, fs in os.walk(item) for f in fs
                     if is_image_file(f))
      if not found:
        raise InputError(f'{item}: folder holds no image files ({", ".join(IMAGE_EXTENSIONS)})')
      paths.extend(found)
    elif os.path.isfile(item):
      paths.append(item)
    else:
      matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
      if not matches:
        raise InputError(f'{item}: no such file, folder, or matching glob')
      paths.extend(matches)
  if not paths:
    raise InputError('no input images given')
  return paths


def check_label_part(part, what='label'):
  """A type or sub-label name: printable, no path separators, not '.'/'..', not padded."""
  if not isinstance(part, str) or not part:
    raise InputError(f'{what} is empty')
  bad = [c for c in part if unicodedata.category(c).startswith('C')]
  if bad:
    raise InputError(f'{what} {part!r} contains control characters')
  if '/' in part or '\\' in part or os.sep in part:
    raise InputError(f'{what} {part!r} contains a path separator')
  if part in ('.', '..') or part != part.strip():
    raise InputError(f'{what} {part!r} is not a valid name (dots only, or leading/trailing space)')
  return part


def split_label(label):
  """'A' -> ('A', None); 'A/glare' -> ('A', 'glare'). One level of sub-labels."""
  if not isinstance(label, str) or not label:
    raise InputError('label is empty')
  parts = label.split('/')
  if len(parts) > 2:
    raise InputError(f'label {label!r}: at most one sub-label level (type/sub-label)')
  doc_type = check_label_part(parts[0], 'type')
  sub = check_label_part(parts[1], 'sub-label') if len(parts) == 2 else None
  return doc_type, sub


def label_type(label):
  return label.split('/', 1)[0]


def scan_registration_tree(root):
  """root/<type>/<image> and root/<type>/<sub-label>/<image> -> [(label, path)], sorted.

  Images deeper than that, or directly in root, are an error: they would be silently unlabelled.
  """
  if not os.path.isdir(root):
    raise InputError(f'{root}: not a folder')
  items = []
  for dirpath, _, files in os.walk(root):
    rel = os.path.relpath(dirpath, root)
    parts = [] if rel == '.' else rel.split(os.sep)
    images = sorted(f for f in files if is_image_file(f))
    if not images:
      continue
    if not parts or len(parts) > 2:
      raise InputError(f'{dirpath}: images must sit in root/<type>/ or root/<type>/<sub-label>/')
    for part, what in zip(parts, ('type', 'sub-label')):
      check_label_part(part, what)
    items.extend(('/'.join(parts), os.path.join(dirpath, f)) for f in images)
  if not items:
    raise InputError(f'{root}: no images found under root/<type>/[<sub-label>/]')
  return sorted(items)


def read_labels_csv(data_dir):
  """DIR/labels.csv (file,label,role; paths relative to DIR) -> list of (path, label, role)."""
  csv_path = os.path.join(data_dir, 'labels.csv')
  if not os.path.isfile(csv_path):
    raise InputError(f'{data_dir}: no labels.csv (columns file,label,role)')
  with open(csv_path, newline='', encoding='utf-8') as f:
    reader = csv.DictReader(f)
    missing = {'file', 'label'} - set(reader.fieldnames or ())
    if missing:
      raise InputError(f'{csv_path}: missing column(s) {sorted(missing)}')
    rows = []
    for i, row in enumerate(reader, start=2):
      if not row['file'] or not row['label']:
        raise InputError(f'{csv_path}:{i}: empty file or label')
      rows.append((os.path.join(data_dir, row['file']), row['label'],
                   (row.get('role') or 'query').strip()))
  if not rows:
    raise InputError(f'{csv_path}: no rows')
  return rows
