"""Training data of the corner detector (issue 15): rendered pages photographed, with their corners.

Each example is a phone photo made by input_pipeline/captures.py from a banked rendered page
(input_pipeline/rendered.py), its four corners known exactly because the photo geometry is drawn
here and handed to the capture: portrait and landscape frames (3:4, 9:16, 1:1, ...) stretched to
the square as inference stretches them, the page from small to filling the frame, tilted,
in perspective, sometimes cut by the frame edge, on desks, keyboards, fabric or another paper,
with a thumb, shadows, glare, blur, noise and JPEG. A share (`full_page_share`; 0 by default,
configs/corners.py says why) fill the frame edge to edge as PDFs, scans and registered templates
do: clean, scanned or photographed, the corners at or just inside (or just past) the frame's. A
share are negatives: the same scenes with no page in view (presence 0, corners ignored by the
loss).

Example `index` is a pure function of (seed, index), so a resumed run sees the same stream.
Corners are [4, 2] (x, y) in [0, 1] of the square image, clockwise from the page's top-left;
`aspect` is the frame's height / width (to measure errors in the unstretched photo).
"""
import numpy as np
import tensorflow as tf

from input_pipeline import captures
from input_pipeline import rendered

HELDOUT_SEED_OFFSET = 7919  # eval captures draw from their own seeds (and held-out templates)


def _u(seed, k, shape=(), lo=0.0, hi=1.0):
  return tf.random.stateless_uniform(shape, tf.random.experimental.stateless_fold_in(seed, k),
                                     lo, hi)


def photo_corners(seed, box, geo):
  """(corners [4, 2] in [0, 1] of the stretched square, frame aspect h / w) of a page in a photo.

  geo: the config's corners.geometry block (frame aspects and weights, fill range, tilt,
  perspective, overhang)."""
  box = tf.cast(box, tf.float32)
  page_aspect = (box[3] - box[1]) / (box[2] - box[0])
  logits = tf.math.log(tf.constant(geo.frame_weights, tf.float32))[None]
  pick = tf.random.stateless_categorical(logits, 1, tf.random.experimental.stateless_fold_in(
      seed, 0))[0, 0]
  a = tf.gather(tf.constant(geo.frame_aspects, tf.float32), pick)  # frame height / width
  # In frame-width units the frame is 1 wide and `a` tall.
  fit = tf.minimum(1.0, a / page_aspect)
  pw = _u(seed, 1, (), geo.fill_min, geo.fill_max) * fit
  ph = pw * page_aspect
  angle = _u(seed, 2, (), -geo.max_tilt, geo.max_tilt)
  unit = tf.constant([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
  rot = tf.stack([[tf.cos(angle), -tf.sin(angle)], [tf.sin(angle), tf.cos(angle)]])
  rel = tf.matmul((unit - 0.5) * tf.stack([pw, ph]), rot, transpose_b=True)
  rel += _u(seed, 3, (4, 2), -geo.perspective, geo.perspective) * tf.maximum(pw, ph)
  # Shrink until the page's extent is inside the frame grown by `overhang` (negative: a margin).
  half = tf.reduce_max(tf.abs(rel), 0)
  overhang = _u(seed, 4, (), geo.overhang_min, geo.overhang_max)
  shrink = tf.minimum(1.0, tf.reduce_min((0.5 + overhang) * tf.stack([1.0, a]) / half))
  rel *= shrink
  half *= shrink
  room = tf.maximum(0.5 * tf.stack([1.0, a]) - half, 0.0)
  centre = 0.5 * tf.stack([1.0, a]) + _u(seed, 5, (2,), -1.0, 1.0) * room
  centre += _u(seed, 6, (2,), -geo.cut_shift, geo.cut_shift)  # cuts one side more than the other
  return (rel + centre) / tf.stack([1.0, a]), a


def full_page_corners(seed, box, geo):
  """(corners [4, 2] in [0, 1], frame aspect h / w, capture mode) of a page that fills the frame:
  a clean render (the corners are the frame's), a scan, or a close photo (each corner moved by up
  to geo.full_page_inset inwards, a third of that outwards, and a small skew)."""
  box = tf.cast(box, tf.float32)
  page_aspect = (box[3] - box[1]) / (box[2] - box[0])
  mode = tf.cast(tf.floor(_u(seed, 100, (), 0.0, 3.0)), tf.int32)  # clean, scan, photo alike
  inset = _u(seed, 101, (4, 2), -geo.full_page_inset / 3, geo.full_page_inset)
  inset *= tf.constant([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
  skew = _u(seed, 102, (), -0.03, 0.03)
  unit = tf.constant([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
  moved = unit + inset
  moved = tf.stack([moved[:, 0] + skew * (moved[:, 1] - 0.5),
                    moved[:, 1] - skew * (moved[:, 0] - 0.5)], 1)
  return tf.where(mode == 0, unit, moved), page_aspect, mode


class CornerCaptures:
  """A bank of rendered pages and the deterministic stream of detector training examples."""

  def __init__(self, template_ids, cfg, image_size, strength=1.0):
    images, boxes, self.template_ids, self.failures = rendered.bank(
        template_ids, cfg.copies, cfg.seed, cfg.template_size, cfg.get('cache_dir', ''),
        cfg.get('render_workers', 0))
    self.cfg = cfg
    self.image_size = int(image_size)
    self.strength = float(strength)
    self.copies = images.shape[1]
    self._images = tf.constant(images)
    self._boxes = tf.constant(boxes)

  def example(self, index, seed_offset=0):
    """{'image': uint8 [S, S, 3], 'corners': [4, 2] in [0, 1], 'present': 0/1, 'aspect': h / w}."""
    seed = tf.stack([tf.constant(self.cfg.seed + seed_offset, tf.int64),
                     tf.cast(index, tf.int64)])
    s = tf.random.experimental.stateless_split(seed, 5)
    n = len(self.template_ids)
    label = tf.random.stateless_uniform((), s[0], 0, n, dtype=tf.int32)
    copy = tf.random.stateless_uniform((), s[1], 0, self.copies, dtype=tf.int32)
    other = tf.random.stateless_uniform((), s[2], 0, n, dtype=tf.int32)
    box = self._boxes[label, copy]
    geo = self.cfg.geometry
    corners, aspect = photo_corners(s[3], box, geo)
    full, full_mode = tf.constant(False), 2
    if geo.get('full_page_share', 0.0) > 0:  # a config choice: off, the graph is as before
      full_corners, full_aspect, full_mode = full_page_corners(s[3], box, geo)
      full = _u(s[3], 103) < geo.full_page_share
      corners = tf.where(full, full_corners, corners)
      aspect = tf.where(full, full_aspect, aspect)
    present = _u(s[4], 0) >= self.cfg.negative_share
    # A negative: the page placed far outside the frame, and no other paper beneath.
    placed = tf.where(present, corners, corners + 4.0)
    image, _ = captures.capture(
        self._images[label, copy], box, s[4], self.image_size, self.strength,
        self._images[other, 0], self._boxes[other, 0], corners=placed * self.image_size,
        paper_prob=tf.where(present, self.cfg.other_paper_share, 0.0), clutter=self.cfg.clutter,
        mode=tf.where(full & present, full_mode, 2))
    return {'image': image, 'corners': tf.clip_by_value(corners, 0.0, 1.0),
            'present': tf.cast(present, tf.float32), 'aspect': aspect}


def train_iterator(config, start_step, process_index=0, process_count=1):
  """This host's share of every global batch from `start_step` on, as numpy dicts."""
  cc = config.corners.data
  docs = CornerCaptures(np.arange(cc.num_templates), cc, config.data.image_size,
                        cc.capture_strength)
  local = config.batch_size // process_count
  ds = tf.data.Dataset.range(start_step * local, 2**62).map(
      lambda e: e // local * config.batch_size + process_index * local + e % local)
  ds = ds.map(docs.example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local, drop_remainder=True).prefetch(config.data.prefetch)
  return ds.as_numpy_iterator()


def heldout_set(config):
  """A fixed eval set from templates never trained on: dict of numpy arrays [N, ...]."""
  cc = config.corners.data
  docs = CornerCaptures(rendered.HELDOUT_START + np.arange(cc.heldout_templates), cc,
                        config.data.image_size, cc.capture_strength)
  ds = tf.data.Dataset.range(cc.heldout_examples).map(
      lambda i: docs.example(i, HELDOUT_SEED_OFFSET), num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True)
  examples = list(ds.as_numpy_iterator())
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
