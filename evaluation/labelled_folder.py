"""An evaluation set on disk: DIR/labels.csv with columns file,label,role (register | query)."""
import csv
import io

import numpy as np
from PIL import Image

import file_io
from input_pipeline import image_io


def load_image(path, image_size):
  """RGB uint8 [size, size, 3]: decoded as training decodes (EXIF orientation, CMYK, 16-bit, alpha,
  bombs refused: input_pipeline/image_io.py), whole image resized (no crop)."""
  return image_io.stretch_to_square(image_io.load_rgb(file_io.read_bytes(path)), image_size)


def read_labels_csv(root):
  path = file_io.join(root, 'labels.csv')
  if not file_io.isfile(path):
    raise FileNotFoundError(f'{root}: no labels.csv (columns file,label,role)')
  rows = list(csv.DictReader(io.StringIO(file_io.read_bytes(path).decode('utf-8'), newline='')))
  if not rows or not {'file', 'label'} <= set(rows[0]):
    raise ValueError(f'{path}: needs columns file,label[,role]')
  return rows


def load_labelled_folder(root, image_size):
  """(images uint8 [N, S, S, 3], labels [N] str, is_register [N] bool, skipped [(file, why)])."""
  images, labels, is_register, skipped = [], [], [], []
  for row in read_labels_csv(root):
    try:
      images.append(load_image(file_io.join(root, row['file']), image_size))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      skipped.append((row['file'], f'{type(e).__name__}: {e}'))
      continue
    labels.append(row['label'])
    is_register.append(row.get('role', 'query') == 'register')
  if not images:
    raise ValueError(f'{root}: no readable images')
  return np.stack(images), np.asarray(labels), np.asarray(is_register), skipped
