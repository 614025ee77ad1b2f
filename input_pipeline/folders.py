"""Document images from a folder tree: root/<type>/<image> or root/<type>/<sub-label>/.../<image>.

Labels (`label_mode` of the source config):
  'type'  - the top-level folder is the class (nested sub-folders belong to their type);
  'leaf'  - the folder holding the image is the class (root/<type>/<sub-label> each a class);
  'image' - every image is a class of its own (the seed's instance-level pretraining);
  'view'  - every image and each of its 24 views (4 rotations x {as is, flipped} x
            {whole, top half, bottom half}) is a class of its own.

Every file is checked once at start (image_io.inspect_image); unusable ones are skipped, counted
and named in the start report. An empty root or a type without a usable image is an error that
says what to prepare.

Order and resumption: the source is index-based. Element e of this process's stream is item
perm_epoch[e mod n] with epoch = e // n and perm_epoch a stateless shuffle seeded by
(seed, epoch); its augmentation is seeded by (seed, process, e). So the stream from any start
index is a pure function of the seed and costs nothing to skip to: we chose random access over
tf.data's `skip` because a folder of files gives random access for free.
"""
import concurrent.futures
import dataclasses
import os
import posixpath

from absl import logging
import numpy as np
import tensorflow as tf

import file_io
from input_pipeline import augment as augment_lib
from input_pipeline import image_io

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp')
LABEL_MODES = ('type', 'leaf', 'image', 'view')
NUM_VIEWS = 24
_SHOW_SKIPPED = 30  # the start report names this many skipped files, then counts the rest


@dataclasses.dataclass
class ScanReport:
  """What a start-of-run scan found: shown to the user before a long run."""
  root: str
  num_classes: int
  num_images: int
  skipped: list  # [(path, reason)]
  class_names: list = dataclasses.field(default_factory=list)  # label -> key (type, leaf, image)

  def summary(self):
    lines = [f'{self.root}: {self.num_classes} classes, {self.num_images} images, '
             f'{len(self.skipped)} skipped']
    for path, reason in self.skipped[:_SHOW_SKIPPED]:
      lines.append(f'  skipped {path}: {reason}')
    if len(self.skipped) > _SHOW_SKIPPED:
      lines.append(f'  ... and {len(self.skipped) - _SHOW_SKIPPED} more')
    return '\n'.join(lines)


def list_files(root):
  """Sorted relative paths ('/'-separated) of all files under root, local or gs://... (hidden
  files and folders ignored)."""
  found = []
  for dirpath, _, filenames in file_io.walk(root):
    rel_dir = os.path.relpath(dirpath, root) if not file_io.is_remote(root) else \
        dirpath[len(root.rstrip('/')):].strip('/')
    for name in filenames:
      found.append(posixpath.normpath(posixpath.join(rel_dir.replace(os.sep, '/'), name)))
  return found


def scan_folder(root, *, label_mode='type', max_pixels=100_000_000, verify='full',
                num_workers=8):
  """Lists and checks a folder tree. Returns (paths [N], labels int64 [N], num_classes, report).

  With label_mode 'view' the labels are per image; the caller expands them to 24 views.
  """
  if label_mode not in LABEL_MODES:
    raise image_io.DataError(f'label_mode={label_mode!r}: expected one of {LABEL_MODES}')
  if not file_io.isdir(root):
    raise image_io.DataError(
        f'folder source: {root!r} is not a directory. Set config.data.folder.root to a '
        'folder root/<type>/<image>.jpg, one sub-folder per document type.')
  types = sorted(d for d in file_io.listdir(root)
                 if not d.startswith('.') and file_io.isdir(file_io.join(root, d)))
  files = list_files(root)
  skipped = []
  candidates = []
  for rel in files:
    if '/' not in rel:
      skipped.append((rel, 'not inside a type folder (expected root/<type>/<image>)'))
    elif not rel.lower().endswith(IMAGE_EXTENSIONS):
      skipped.append((rel, 'not an image file extension'))
    else:
      candidates.append(rel)
  if not types or not candidates:
    raise image_io.DataError(
        f'folder source: no images under {root!r} (found {len(files)} files, {len(types)} '
        'type folders). Prepare root/<type>/<image>.jpg, one sub-folder per document type.')
  check = lambda rel: image_io.inspect_image(file_io.join(root, rel), max_pixels=max_pixels,
                                             full=(verify == 'full'))
  # Pillow releases the GIL while decoding: threads make the start-up check parallel.
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    reasons = list(pool.map(check, candidates))
  good = []
  for rel, reason in zip(candidates, reasons):
    if reason is None:
      good.append(rel)
    else:
      skipped.append((rel, reason))
  per_type = {t: 0 for t in types}
  for rel in good:
    per_type[rel.split('/', 1)[0]] += 1
  empty = [t for t, n in per_type.items() if n == 0]
  if empty:
    raise image_io.DataError(
        f'folder source {root!r}: type folder(s) {empty} hold no usable image '
        f'({len(skipped)} files skipped). Add images or remove the folder(s).')
  if label_mode == 'type':
    keys = [rel.split('/', 1)[0] for rel in good]
  elif label_mode == 'leaf':
    keys = [posixpath.dirname(rel) for rel in good]
  else:
    keys = good
  names = sorted(set(keys))
  index = {k: i for i, k in enumerate(names)}
  labels = np.array([index[k] for k in keys], np.int64)
  num_classes = len(names) * (NUM_VIEWS if label_mode == 'view' else 1)
  report = ScanReport(root, num_classes, len(good), sorted(skipped), names)
  paths = [file_io.join(root, rel) for rel in good]
  return paths, labels, num_classes, report


# ---- The tf.data stream shared by every file-backed source (folders, rendered PDF pages) ----

def apply_view(image, view):
  """View v of 24: part = v % 3 (whole, top half, bottom half), flip = v // 3 % 2, rot = v // 6."""
  h = tf.shape(image)[0]
  view = tf.cast(view, tf.int32)
  part = view % 3
  image = tf.switch_case(part, [
      lambda: image,
      lambda: image[:tf.maximum(h // 2, 1)],
      lambda: image[h // 2:]])
  image = tf.cond(view // 3 % 2 == 1, lambda: image[:, ::-1], lambda: image)
  return tf.image.rot90(image, k=view // 6)


def _decode_fn(max_side, max_pixels):
  def decode(data):
    try:
      return image_io.load_rgb(data, max_side=max_side, max_pixels=max_pixels)
    except ValueError as e:
      # Checked at start, so only a file changed since then lands here: train on a blank
      # page rather than kill a long run; the log says which.
      logging.warning('image unreadable at training time, using a blank page: %s', e)
      return np.full((8, 8, 3), 255, np.uint8)
  return decode


def shuffled_positions(n, seed, start_index):
  """Dataset of int64 positions in [0, n): epoch after epoch, each a stateless permutation."""
  epoch0, offset = divmod(int(start_index), n)

  def epoch(e):
    perm = tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), tf.stack([tf.constant(seed, tf.int64), e]))
    return tf.data.Dataset.from_tensor_slices(perm)

  return tf.data.Dataset.range(epoch0, 2**62).flat_map(epoch).skip(offset)


def file_source(paths, labels, num_classes, source_config, *, image_size, seed, process_index,
                process_count, start_index=0, augment_config=None, views=False, teacher_size=0):
  """Infinite stream of this process's share of (file, view) items: {'image', 'label'}.

  paths/labels: every item of the source (all processes); item i goes to process i % count.
  views=True expands each image into its 24 view-classes (label * 24 + view).
  teacher_size > 0 adds 'teacher_image': the item (the whole image, or its view) un-augmented,
  stretched to teacher_size^2, for a distillation teacher.
  """
  n_images = len(paths)
  if views:
    item_image = np.repeat(np.arange(n_images), NUM_VIEWS)
    item_view = np.tile(np.arange(NUM_VIEWS), n_images)
  else:
    item_image = np.arange(n_images)
    item_view = np.zeros(n_images, np.int64)
  mine = slice(process_index, None, process_count)
  item_image, item_view = item_image[mine], item_view[mine]
  if len(item_image) == 0:
    raise image_io.DataError(
        f'file source: {n_images} images cannot feed {process_count} processes; add images.')
  paths_t = tf.constant([os.fsencode(p) for p in paths])  # any file name, as bytes
  labels_t = tf.constant(labels, tf.int64)
  item_image_t = tf.constant(item_image, tf.int64)
  item_view_t = tf.constant(item_view, tf.int64)
  # JPEGs decode at reduced scale; the teacher's clean view must not be upsampled from that.
  max_side = int(source_config.get('decode_max_side', 0) or max(2 * image_size, teacher_size))
  decode = _decode_fn(max_side, int(source_config.get('max_pixels', 100_000_000)))
  # Augmentation draws: seeded per process, so hosts never share an augmentation.
  aug_key = int(np.random.default_rng([seed, process_index, 0x5EED]).integers(2**62))

  def load(element_index, position):
    img_i = item_image_t[position]
    view = item_view_t[position]
    image = tf.numpy_function(decode, [tf.io.read_file(paths_t[img_i])], tf.uint8,
                              stateful=False)
    image.set_shape([None, None, 3])
    label = labels_t[img_i]
    if views:
      image = apply_view(image, view)
      label = label * NUM_VIEWS + view
    out = {'image': augment_lib.process(
        image, tf.stack([tf.constant(aug_key, tf.int64), element_index]), augment_config,
        image_size), 'label': tf.cast(label, tf.int32)}
    if teacher_size:
      out['teacher_image'] = augment_lib.resize_only(image, teacher_size)
    return out

  positions = shuffled_positions(len(item_image), seed, start_index)
  indices = tf.data.Dataset.range(int(start_index), 2**62)
  ds = tf.data.Dataset.zip(indices, positions)
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds, num_classes


def make_source(source_config, *, image_size, seed, process_index=0, process_count=1,
                start_index=0, augment_config=None, classes=None, teacher_size=0):
  """The 'folder' source: (dataset of {'image': uint8 [S, S, 3], 'label': int32}, num_classes).

  source_config: root, label_mode, verify ('full' | 'header'), max_pixels, decode_max_side.
  teacher_size: see file_source.
  classes: a list that, when given, receives the class names in label order (the folder keys;
  with label_mode 'view' each image key stands for its 24 view-classes).
  """
  label_mode = source_config.get('label_mode', 'type')
  paths, labels, num_classes, report = scan_folder(
      source_config.root, label_mode=label_mode,
      max_pixels=int(source_config.get('max_pixels', 100_000_000)),
      verify=source_config.get('verify', 'full'))
  logging.info('folder source %s', report.summary())
  if classes is not None:
    classes.extend(report.class_names)
  return file_source(paths, labels, num_classes, source_config, image_size=image_size,
                     seed=seed, process_index=process_index, process_count=process_count,
                     start_index=start_index, augment_config=augment_config,
                     views=(label_mode == 'view'), teacher_size=teacher_size)
