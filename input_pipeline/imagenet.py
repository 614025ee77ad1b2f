"""ImageNet-1k train split with every image its own class (1,281,167 classes), via tfds.

The seed's biggest single gain (TPR@FPR=1e-4 0.772 -> 0.813) came from instance-level classes on
ImageNet: a document embedder must tell apart images, not object categories. The label is the
image's global index in the train split; label_mode='original' gives the 1000 categories
instead, and keep_original_label=True adds them as 'original_label' next to the instance label.

The user prepares `imagenet2012` with tfds (manual download) into TFDS_DATA_DIR, a local path or
a gs:// bucket. Nothing is downloaded here.

Order and resumption: TFRecords are read sequentially, so random access (as the folder source
does) is not available. Each process reads its contiguous slice train[a:b] in stored order (tfds
already shuffled the examples when it prepared them), epoch e through a shuffle buffer seeded by
(seed, e). A run resumed at element index i rebuilds epoch i // n and skips i % n *encoded*
records (the image decoder is skipped, so this is I/O only, at most one local epoch): the exact
stream of an uninterrupted run, at a bounded start-up cost, with nothing to save but the step.
"""
import os

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import augment as augment_lib
from input_pipeline import image_io

NUM_TRAIN_IMAGES = 1_281_167
NUM_CATEGORIES = 1000
_PREPARE_HELP = (
    'Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org into '
    '<data_dir>/downloads/manual/ and run `tfds build imagenet2012 --data_dir=<data_dir>` '
    '(or set TFDS_DATA_DIR / the source\'s data_dir to where it is prepared).')


def _builder(source_config):
  data_dir = source_config.get('data_dir', '') or os.environ.get('TFDS_DATA_DIR') or None
  name = source_config.get('tfds_name', 'imagenet2012')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # unknown name, unreadable bucket ...
    raise image_io.DataError(f'imagenet source: cannot open tfds {name!r} in {data_dir}: '
                             f'{e}. {_PREPARE_HELP}') from None
  return builder, data_dir


def num_train_examples(builder, source_config):
  """Examples in the train split: from the prepared dataset, or the config's num_examples."""
  override = int(source_config.get('num_examples', 0) or 0)
  splits = builder.info.splits
  if 'train' in splits:
    n = splits['train'].num_examples
    return min(n, override) if override else n
  if override:  # tfds.testing.mock_data has no split metadata: tests say how many.
    return override
  raise image_io.DataError(
      f'imagenet source: tfds {builder.name!r} is not prepared in '
      f'{builder.data_dir!r}. {_PREPARE_HELP}')


def process_range(n, process_index, process_count):
  """Contiguous [start, end) of the n examples that this process reads (even split)."""
  return n * process_index // process_count, n * (process_index + 1) // process_count


def _decode(data):
  # tfds stores every train image as RGB JPEG (it converts the CMYK and PNG ones when preparing),
  # decode_image still copes with a PNG or grayscale file in a custom build.
  image = tf.io.decode_image(data, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def make_source(source_config, *, image_size, seed, process_index=0, process_count=1,
                start_index=0, augment_config=None, teacher_size=0):
  """The 'imagenet_per_image' source: (dataset of {'image', 'label'[, 'original_label']}, classes).

  source_config: data_dir ('' -> $TFDS_DATA_DIR), tfds_name, label_mode ('image' | 'original'),
  keep_original_label, shuffle_buffer, num_examples (0: all).
  teacher_size > 0 adds 'teacher_image': the whole image un-augmented, stretched to
  teacher_size^2, for a distillation teacher.
  """
  builder, data_dir = _builder(source_config)
  label_mode = source_config.get('label_mode', 'image')
  if label_mode not in ('image', 'original'):
    raise image_io.DataError(f"imagenet source: label_mode={label_mode!r}, expected 'image' "
                             "or 'original'")
  n_total = num_train_examples(builder, source_config)
  start, end = process_range(n_total, process_index, process_count)
  n = end - start
  if n <= 0:
    raise image_io.DataError(f'imagenet source: {n_total} examples for {process_count} hosts')
  try:
    base = builder.as_dataset(split=f'train[{start}:{end}]', shuffle_files=False,
                              decoders={'image': tfds.decode.SkipDecoding()})
  except AssertionError as e:  # tfds' way of saying "not prepared"
    raise image_io.DataError(f'imagenet source: {e} {_PREPARE_HELP}') from None
  num_classes = n_total if label_mode == 'image' else NUM_CATEGORIES
  logging.info('imagenet source %s in %s: %d images, %d classes; process %d reads [%d, %d)',
               builder.name, data_dir, n_total, num_classes, process_index, start, end)
  # Global index = position in the split: the instance label, identical on every host.
  base = base.take(n).enumerate(start=start).map(
      lambda i, ex: {'data': ex['image'], 'index': i, 'original_label': ex['label']})
  buffer = int(source_config.get('shuffle_buffer', 10_000))
  epoch0, offset = divmod(int(start_index), n)

  def epoch(e):
    shuffled = base.shuffle(buffer, seed=seed * 1_000_003 + e, reshuffle_each_iteration=False)
    return shuffled.skip(tf.where(e == epoch0, tf.constant(offset, tf.int64), 0))

  records = tf.data.Dataset.range(epoch0, 2**62).flat_map(epoch)
  aug_key = int(np.random.default_rng([seed, process_index, 0x1A6E]).integers(2**62))
  keep_original = bool(source_config.get('keep_original_label', False))

  def load(element_index, ex):
    decoded = _decode(ex['data'])
    image = augment_lib.process(decoded, tf.stack([tf.constant(aug_key, tf.int64), element_index]),
                                augment_config, image_size)
    label = ex['index'] if label_mode == 'image' else ex['original_label']
    out = {'image': image, 'label': tf.cast(label, tf.int32)}
    if teacher_size:
      out['teacher_image'] = augment_lib.resize_only(decoded, teacher_size)
    if keep_original:
      out['original_label'] = tf.cast(ex['original_label'], tf.int32)
    return out

  ds = tf.data.Dataset.zip(tf.data.Dataset.range(int(start_index), 2**62), records)
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds, num_classes
