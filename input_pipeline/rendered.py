"""The 'paperwork' source: a bank of rendered pages (input_pipeline/paperwork.py) made once into a
cache, and the deterministic stream of their captures (input_pipeline/captures.py) made in-graph.

Rendering a page takes tens of milliseconds of PIL; a capture of a banked page takes well under
one in TF. So the bank (templates x copies, uint8 at `template_size`) is rendered once, in
parallel, into `cache_dir/paperwork-<key>.npz`, keyed by the generator's version, the seed, the
template ids, the copies, the size and the installed font files, written atomically and checked
by a stored sha256 on load: a corrupt or foreign cache is rebuilt, never reused. A template
that fails to render is skipped and counted; the classes are the templates that rendered.

Capture `index` is a pure function of (seed, index), as in input_pipeline/synthetic.py: a resumed
run continues exactly, and every host makes its own share.
"""
import concurrent.futures
import hashlib
import io
import json
import multiprocessing
import os
import zipfile

from absl import logging
import numpy as np
import tensorflow as tf

import file_io
from input_pipeline import augment
from input_pipeline import captures
from input_pipeline import fonts
from input_pipeline import image_io
from input_pipeline import paperwork

# Bump whenever paperwork.py, fonts.py or their packages change what a page looks like.
GENERATOR_VERSION = 1
HELDOUT_START = 10_000_000  # held-out template ids (and so their issuers) never meet training ids


def bank_key(template_ids, copies, seed, size):
  font_sig = [(os.path.basename(f), os.path.getsize(f))
              for files in fonts.font_files().values() for _, f in files]
  ids = np.asarray(template_ids, np.int64)
  h = hashlib.sha256(json.dumps([GENERATOR_VERSION, int(seed), int(copies), int(size), font_sig,
                                 paperwork.RENDER_SCALE]).encode())
  h.update(ids.tobytes())
  return h.hexdigest()[:20]


def _render_one(args):
  template_id, copies, seed, size = args
  try:
    pages = [paperwork.render(template_id, c, seed, size) for c in range(copies)]
  except Exception as e:  # pylint: disable=broad-except
    return template_id, None, f'{type(e).__name__}: {e}'
  return template_id, pages, None


def render_bank(template_ids, copies, seed, size, workers=0):
  """(images uint8 [T, C, S, S, 3], boxes float32 [T, C, 4], kept template ids, failures)."""
  jobs = [(int(t), int(copies), int(seed), int(size)) for t in template_ids]
  workers = workers or min(len(jobs), os.cpu_count() or 1)
  fonts.font_files()  # fail fast, once, with the line naming what to install
  if workers > 1:
    # spawn, not fork: the trainer has JAX's and TF's threads running, and a forked child can
    # inherit a lock one of them held.
    ctx = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
      results = list(pool.map(_render_one, jobs, chunksize=8))
  else:
    results = [_render_one(j) for j in jobs]
  kept = [(t, pages) for t, pages, err in results if pages is not None]
  failures = [(t, err) for t, pages, err in results if pages is None]
  images = np.zeros((len(kept), copies, size, size, 3), np.uint8)
  boxes = np.zeros((len(kept), copies, 4), np.float32)
  for i, (_, pages) in enumerate(kept):
    for c, (img, box) in enumerate(pages):
      images[i, c], boxes[i, c] = img, box
  return images, boxes, np.array([t for t, _ in kept], np.int64), failures


def _digest(images, boxes, ids):
  h = hashlib.sha256()
  for a in (images, boxes, ids):
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def load_bank(path, key):
  """The cached bank at path if it is whole and made for `key`, else None (with a reason logged)."""
  if not file_io.exists(path):
    return None
  try:
    source = io.BytesIO(file_io.read_bytes(path)) if file_io.is_remote(path) else path
    with np.load(source, allow_pickle=False) as z:
      meta = json.loads(str(z['meta']))
      images, boxes, ids = z['images'], z['boxes'], z['template_ids']
    if meta.get('key') != key or meta.get('sha256') != _digest(images, boxes, ids):
      logging.warning('render cache %s: made for another generator or damaged; rendering again', path)
      return None
    return images, boxes, ids, meta.get('failures', [])
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
    logging.warning('render cache %s: unreadable (%s); rendering again', path, type(e).__name__)
    return None


def bank(template_ids, copies, seed, size, cache_dir='', workers=0):
  """The rendered bank, from the cache when it is valid; rendered and cached atomically if not."""
  key = bank_key(template_ids, copies, seed, size)
  cache_dir = os.path.expanduser(cache_dir or os.path.join('~', '.cache', 'docembed', 'paperwork'))
  path = os.path.join(cache_dir, f'paperwork-{key}.npz')
  cached = load_bank(path, key)
  if cached is not None:
    return cached
  images, boxes, ids, failures = render_bank(template_ids, copies, seed, size, workers)
  if failures:
    logging.warning('rendered documents: %d of %d templates could not be laid out and are '
                    'skipped (first: template %d, %s)', len(failures), len(template_ids),
                    failures[0][0], failures[0][1])
  if len(ids) < 2:
    raise image_io.DataError(f'rendered documents: only {len(ids)} of {len(template_ids)} '
                             'templates rendered; need at least 2 classes')
  meta = dict(key=key, sha256=_digest(images, boxes, ids), version=GENERATOR_VERSION,
              failures=[[int(t), e] for t, e in failures])
  try:
    file_io.write_with_atomic(path, lambda tmp: np.savez(
        tmp, images=images, boxes=boxes, template_ids=ids, meta=np.array(json.dumps(meta))))
  except OSError as e:  # a read-only or full disk costs a re-render next time, not the run
    logging.warning('render cache %s not written (%s)', path, e)
  return images, boxes, ids, meta['failures']


class RenderedDocuments:
  """Templates (classes) x copies, and the deterministic stream of their captures."""

  def __init__(self, template_ids, cfg, image_size):
    self.seed = int(cfg.seed)
    self.image_size = int(image_size)
    self.strength = float(cfg.capture_strength)
    images, boxes, self.template_ids, self.failures = bank(
        template_ids, cfg.copies, cfg.seed, cfg.template_size, cfg.get('cache_dir', ''),
        cfg.get('render_workers', 0))
    self.copies = images.shape[1]
    self._images = tf.constant(images)
    self._boxes = tf.constant(boxes)

  @property
  def num_classes(self):
    return len(self.template_ids)

  def _copy(self, seed):
    """Which copy of the template the capture of `seed` shows (the first of _capture's draws)."""
    s = tf.random.experimental.stateless_split(seed, 4)
    return tf.random.stateless_uniform((), s[0], 0, self.copies, dtype=tf.int32)

  def _capture(self, label, seed):
    s = tf.random.experimental.stateless_split(seed, 4)
    copy = self._copy(seed)
    other = tf.random.stateless_uniform((), s[1], 0, self.num_classes, dtype=tf.int32)
    return captures.capture(self._images[label, copy], self._boxes[label, copy], s[2],
                            self.image_size, self.strength, self._images[other, 0],
                            self._boxes[other, 0])

  def clean_page(self, label, seed, size):
    """The page the capture of (label, seed) was made from, cut out of its canvas and stretched
    to size^2 (as inference stretches an image): what a distillation teacher sees."""
    copy = self._copy(seed)
    b = tf.cast(tf.round(self._boxes[label, copy]), tf.int32)
    return augment.resize_only(self._images[label, copy][b[1]:b[3], b[0]:b[2]], size)

  def _label_and_seed(self, index):
    seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(index, tf.int64)])
    s = tf.random.experimental.stateless_split(seed, 2)
    return tf.random.stateless_uniform((), s[0], 0, self.num_classes, dtype=tf.int32), s[1]

  def labelled_capture(self, index):
    """Capture number `index`: (image, label, corners)."""
    label, seed = self._label_and_seed(index)
    image, corners = self._capture(label, seed)
    return image, label, corners

  def example(self, index, teacher_size=0):
    """Capture number `index`: {'image', 'label'}, and with teacher_size the clean page it shows
    as 'teacher_image' (distillation: the teacher sees the document, not the capture)."""
    label, seed = self._label_and_seed(index)
    image, _ = self._capture(label, seed)
    out = {'image': image, 'label': label}
    if teacher_size:
      out['teacher_image'] = self.clean_page(label, seed, teacher_size)
    return out

  def example_of(self, label, index):
    """Capture `index` of class `label`, its own seed per (class, index), for fixed eval sets."""
    seed = tf.stack([tf.constant(self.seed, tf.int64) + 7919, tf.cast(index, tf.int64)])
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(label, tf.int64))
    return self._capture(label, seed)[0]


def train_templates(cfg):
  return np.arange(cfg.num_templates)


def heldout_templates(cfg):
  return np.arange(HELDOUT_START, HELDOUT_START + cfg.heldout_templates)


def heldout_set(cfg, image_size):
  """Fixed eval set of held-out templates: images [N, H, W, 3], labels [N], is_register [N].

  Capture 0 of each template is its registered image; the rest are queries."""
  docs = RenderedDocuments(heldout_templates(cfg), cfg, image_size)
  n = cfg.heldout_captures
  labels = np.repeat(np.arange(docs.num_classes), n).astype(np.int32)
  indices = np.tile(np.arange(n), docs.num_classes)
  ds = tf.data.Dataset.from_tensor_slices((labels, indices)).map(
      docs.example_of, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return np.stack(list(ds.as_numpy_iterator())), labels, indices == 0


def training_captures(cfg, image_size, per_template):
  """Captures 0..per_template-1 of every training template (example_of: fixed seeds), as
  (uint8 images [T * per_template, S, S, 3], labels [T * per_template]): the fixed set a model
  is fitted on (tools/fit_whitening.py)."""
  docs = RenderedDocuments(train_templates(cfg), cfg, image_size)
  labels = np.repeat(np.arange(docs.num_classes), per_template).astype(np.int32)
  index = np.tile(np.arange(per_template), docs.num_classes)
  ds = tf.data.Dataset.from_tensor_slices((labels, index)).map(
      docs.example_of, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return np.stack(list(ds.as_numpy_iterator())), labels


def grouped_batches(docs, classes_per_batch, per_class, start_step, seed, process_index=0,
                    process_count=1):
  """Batches of `classes_per_batch` distinct templates x `per_class` captures each (the pairs a
  pairwise loss needs), deterministic per step; each process gets its contiguous share."""
  size = classes_per_batch * per_class
  local = size // process_count
  lo = process_index * local

  def slots(step):
    s = tf.stack([tf.constant(seed, tf.int64), step])
    classes = tf.argsort(tf.random.stateless_uniform([docs.num_classes], s))[:classes_per_batch]
    labels = tf.repeat(classes, per_class)
    index = step * size + tf.range(size, dtype=tf.int64)
    return tf.data.Dataset.from_tensor_slices((labels[lo:lo + local], index[lo:lo + local]))

  return (tf.data.Dataset.range(start_step + 1, 2**62).flat_map(slots)
          .map(lambda label, index: {'image': docs.example_of(label, index), 'label': label},
               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .batch(local, drop_remainder=True).prefetch(2))
