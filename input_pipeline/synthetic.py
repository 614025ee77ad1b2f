"""Embedded default data: procedural synthetic documents, nothing downloaded.

A *template* is a document type (a class): card-sized (ID-1, 85.6 x 54 mm) or A4-sized, with a
paper colour scheme, header band, logo, title, photo box, table, text lines, stamp, barcode,
signature. Each template is rendered in a few *variants* (same layout and styling, different
field contents: names, numbers), as two filled-in copies of one form differ.

A *capture* is what a phone or scanner makes of it, made in-graph with TF ops: perspective and
rotation onto a background, partial crops, shadow, glare, colour shift, blur, noise, JPEG.

Everything is a pure function of (seed, template id) and (seed, example index), so a batch is a
function of its step: resuming a run neither repeats nor skips data, and every host can make its
own share of the global batch.
"""
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont
import tensorflow as tf

from input_pipeline import augment

NUM_VARIANTS = 2
CARD_ASPECT = 85.6 / 54.0
A4_ASPECT = 297.0 / 210.0


# ---------------------------------------------------------------------------------------------
# Templates (numpy + PIL, rendered once at start).
# ---------------------------------------------------------------------------------------------

def _colour(rng, lo=0, hi=255):
  return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _paper_colour(rng):
  if rng.random() < 0.5:  # white-ish paper
    base = rng.integers(225, 256)
    return tuple(int(np.clip(base + rng.integers(-12, 6), 0, 255)) for _ in range(3))
  return _colour(rng, 150, 256)  # tinted security paper / card stock


def _text_bars(draw, rng, x0, y0, x1, y1, line_h, colour, fill_ratio=0.8):
  """Lines of word-like bars: at these resolutions text is texture, its layout is the signal."""
  y = y0
  while y + line_h <= y1:
    x = x0
    limit = x0 + (x1 - x0) * rng.uniform(0.4, 1.0) if rng.random() < 0.3 else x1
    while x < limit:
      w = rng.integers(2, 7) * max(1, line_h // 2)
      if x + w > limit:
        break
      if rng.random() < fill_ratio:
        draw.rectangle([x, y, x + w, y + max(1, int(line_h * 0.6))], fill=colour)
      x += w + max(1, line_h // 2)
    y += line_h + max(1, line_h // 2)


def _logo(draw, rng, cx, cy, r, colour, accent):
  kind = rng.integers(0, 4)
  if kind == 0:
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    draw.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=accent)
  elif kind == 1:
    n = int(rng.integers(3, 8))
    pts = [(cx + r * math.cos(2 * math.pi * i / n + 0.3), cy + r * math.sin(2 * math.pi * i / n + 0.3))
           for i in range(n)]
    draw.polygon(pts, fill=colour, outline=accent)
  elif kind == 2:  # star
    pts = []
    for i in range(10):
      rr = r if i % 2 == 0 else r * 0.45
      a = math.pi * i / 5 - math.pi / 2
      pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    draw.polygon(pts, fill=colour)
  else:
    draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    draw.line([cx - r, cy + r, cx + r, cy - r], fill=accent, width=max(1, int(r / 3)))


def _template_style(template_id, seed):
  """Layout and styling of a template: what all its variants share."""
  rng = np.random.default_rng([seed, template_id, 0])
  card = rng.random() < 0.5
  return dict(
      card=card,
      paper=_paper_colour(rng),
      ink=_colour(rng, 0, 90),
      primary=_colour(rng),
      accent=_colour(rng),
      header=rng.random() < 0.8,
      header_frac=rng.uniform(0.1, 0.25),
      footer=rng.random() < 0.4,
      logo_side=int(rng.integers(0, 3)),  # 0 left, 1 right, 2 none
      photo=card and rng.random() < 0.7 or (not card and rng.random() < 0.15),
      photo_left=rng.random() < 0.6,
      table=rng.random() < (0.3 if card else 0.7),
      table_rows=int(rng.integers(3, 9)),
      table_cols=int(rng.integers(2, 6)),
      stamp=rng.random() < 0.4,
      barcode=rng.random() < 0.35,
      signature=rng.random() < 0.4,
      pattern=rng.random() < 0.4,
      pattern_freq=rng.uniform(0.05, 0.3),
      text_line=rng.uniform(0.02, 0.045),
      margin=rng.uniform(0.04, 0.1),
      rng_state=int(rng.integers(0, 2**31)),
  )


def render_template(template_id, variant, seed, size):
  """One filled-in copy of a template: (RGB uint8 [size, size, 3], box (x0, y0, x1, y1) in px).

  The document is centred in a square canvas; outside its box is undefined (the capture
  composites a background there).
  """
  st = _template_style(template_id, seed)
  layout_rng = np.random.default_rng([seed, template_id, 1])   # shared by variants
  field_rng = np.random.default_rng([seed, template_id, 2, variant])  # differs per variant
  aspect = CARD_ASPECT if st['card'] else A4_ASPECT
  if st['card']:
    w, h = size, int(round(size / aspect))
  else:
    w, h = int(round(size / aspect)), size
  img = Image.new('RGB', (w, h), st['paper'])
  d = ImageDraw.Draw(img)
  if st['pattern']:  # guilloche-like background lines
    xs = np.arange(w)
    for k in range(0, h, max(2, h // 12)):
      ys = k + 3 * np.sin(xs * st['pattern_freq'] + k)
      d.line(list(zip(xs.tolist(), ys.tolist())), fill=tuple(min(255, c + 25) for c in st['primary']))
  m = int(st['margin'] * w)
  top = m
  if st['header']:
    hh = int(st['header_frac'] * h * (0.6 if not st['card'] else 1.0))
    d.rectangle([0, 0, w, hh], fill=st['primary'])
    _text_bars(d, layout_rng, m + hh, hh // 4, w - m, hh - hh // 4, max(2, hh // 4), st['paper'], 1.0)
    top = hh + m // 2
  if st['logo_side'] < 2:
    r = max(3, int(0.07 * min(w, h) * 1.5))
    cx = m + r if st['logo_side'] == 0 else w - m - r
    cy = (top if not st['header'] else top - m // 2) // 2 if st['header'] else m + r
    if st['header']:
      cy = max(r, int(st['header_frac'] * h * (0.6 if not st['card'] else 1.0)) // 2)
    _logo(d, layout_rng, cx, cy, r, st['accent'], st['paper'])
  if st['footer']:
    d.rectangle([0, h - max(3, h // 14), w, h], fill=st['accent'])
  body_x0, body_x1, body_y1 = m, w - m, h - m - (h // 14 if st['footer'] else 0)
  line_h = max(2, int(st['text_line'] * h))
  if st['photo']:
    pw = int(0.28 * w) if st['card'] else int(0.3 * w)
    ph = int(pw * 1.25)
    px = m if st['photo_left'] else w - m - pw
    py = top
    d.rectangle([px, py, px + pw, py + ph], fill=(200, 200, 205), outline=st['ink'])
    face = field_rng.integers(60, 200)  # the person differs per copy
    d.ellipse([px + pw * 0.25, py + ph * 0.15, px + pw * 0.75, py + ph * 0.6], fill=(face, face - 20, face - 30))
    d.ellipse([px + pw * 0.1, py + ph * 0.6, px + pw * 0.9, py + ph * 1.2], fill=_colour(field_rng, 20, 200))
    if st['photo_left']:
      body_x0 = px + pw + m
    else:
      body_x1 = px - m
  y = top
  if st['table']:
    th = int((body_y1 - y) * (0.45 if not st['card'] else 0.5))
    rows, cols = st['table_rows'], st['table_cols']
    d.rectangle([body_x0, y, body_x1, y + th // rows], fill=st['accent'])
    for rr in range(rows + 1):
      yy = y + rr * th // rows
      d.line([body_x0, yy, body_x1, yy], fill=st['ink'])
    for cc in range(cols + 1):
      xx = body_x0 + cc * (body_x1 - body_x0) // cols
      d.line([xx, y, xx, y + th], fill=st['ink'])
    for rr in range(1, rows):
      for cc in range(cols):
        cx0 = body_x0 + cc * (body_x1 - body_x0) // cols + 2
        cw = (body_x1 - body_x0) // cols - 4
        if field_rng.random() < 0.8 and cw > 2:
          yy = y + rr * th // rows + 2
          d.rectangle([cx0, yy, cx0 + int(cw * field_rng.uniform(0.2, 0.9)),
                       yy + max(1, th // rows // 3)], fill=st['ink'])
    y += th + m // 2
  # Labels (fixed per template) then values (differ per copy), line by line.
  labels_w = int((body_x1 - body_x0) * layout_rng.uniform(0.2, 0.4))
  yy = y
  while yy + line_h < body_y1 - (line_h * 3 if st['signature'] or st['barcode'] else 0):
    if layout_rng.random() < 0.85:
      d.rectangle([body_x0, yy, body_x0 + int(labels_w * layout_rng.uniform(0.5, 1.0)),
                   yy + max(1, int(line_h * 0.5))], fill=st['primary'])
    vx0 = body_x0 + labels_w + line_h
    vw = int((body_x1 - vx0) * field_rng.uniform(0.2, 1.0))
    if vw > 0:
      _text_bars(d, field_rng, vx0, yy, vx0 + vw, yy + line_h, line_h, st['ink'])
    yy += int(line_h * 1.7)
  if st['barcode']:
    bx, by = body_x0, body_y1 - line_h * 2
    for i in range(int((body_x1 - body_x0) * 0.4)):
      if field_rng.random() < 0.5:
        d.line([bx + i, by, bx + i, body_y1], fill=(0, 0, 0))
  if st['signature']:
    sx = body_x1 - (body_x1 - body_x0) // 3
    pts = [(sx + i * 2, body_y1 - line_h + line_h * math.sin(i * field_rng.uniform(0.3, 1.2)))
           for i in range(max(2, (body_x1 - sx) // 2))]
    d.line(pts, fill=(20, 20, 120), width=1)
  if st['stamp']:
    r = int(0.12 * min(w, h))
    cx = int(layout_rng.uniform(0.5, 0.85) * w)
    cy = int(layout_rng.uniform(0.55, 0.85) * h)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=st['accent'], width=max(1, r // 6))
    d.ellipse([cx - r // 2, cy - r // 2, cx + r // 2, cy + r // 2], outline=st['accent'], width=1)
  canvas = Image.new('RGB', (size, size), (0, 0, 0))
  x0, y0 = (size - w) // 2, (size - h) // 2
  canvas.paste(img, (x0, y0))
  return np.asarray(canvas, dtype=np.uint8), (x0, y0, x0 + w, y0 + h)


def render_templates(template_ids, seed, size):
  """All variants of the given templates: images [T, V, S, S, 3] uint8, boxes [T, 4] float32."""
  images = np.zeros((len(template_ids), NUM_VARIANTS, size, size, 3), np.uint8)
  boxes = np.zeros((len(template_ids), 4), np.float32)
  for i, t in enumerate(template_ids):
    for v in range(NUM_VARIANTS):
      images[i, v], box = render_template(int(t), v, seed, size)
    boxes[i] = box
  return images, boxes


# ---------------------------------------------------------------------------------------------
# Captures (TF, in-graph, stateless random from (seed, index)).
# ---------------------------------------------------------------------------------------------

def _warp(image, transform, out_size, fill=0.0):
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform[None], output_shape=[out_size, out_size],
      fill_value=fill, interpolation='BILINEAR', fill_mode='CONSTANT')[0]


def _uniform(seed, shape=(), lo=0.0, hi=1.0):
  return tf.random.stateless_uniform(shape, seed, lo, hi)


def _gaussian_blur(image, sigma):
  k = tf.range(-3, 4, dtype=tf.float32)
  g = tf.exp(-0.5 * tf.square(k / tf.maximum(sigma, 1e-3)))
  g /= tf.reduce_sum(g)
  kx = tf.tile(tf.reshape(g, [1, 7, 1, 1]), [1, 1, 3, 1])
  ky = tf.tile(tf.reshape(g, [7, 1, 1, 1]), [1, 1, 3, 1])
  x = tf.nn.depthwise_conv2d(image[None], kx, [1, 1, 1, 1], 'SAME')
  return tf.nn.depthwise_conv2d(x, ky, [1, 1, 1, 1], 'SAME')[0]


def make_capture(template, box, seed, out_size, strength=1.0):
  """A degraded view of one rendered template. template: [S, S, 3] uint8; box: [4]; seed: [2] int.

  strength (python float) scales every degradation: geometric jitter, the share of upside-down
  captures, shadow, glare, colour, blur, noise and the lowest JPEG quality. 1.0 is the full range
  below; 0 leaves an upright, centred, clean view on a background.
  """
  k = float(strength)
  seeds = tf.random.experimental.stateless_split(seed, 16)
  s = tf.cast(tf.shape(template)[0], tf.float32)
  img = tf.cast(template, tf.float32) / 255.0
  # Perspective and rotation: document corners -> jittered corners of a rotated, scaled box.
  x0, y0, x1, y1 = box[0], box[1], box[2], box[3]
  src = tf.stack([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
  scale = _uniform(seeds[0], (), 0.875 - 0.225 * k, 0.875 + 0.225 * k) * out_size / tf.maximum(
      x1 - x0, y1 - y0)
  angle = _uniform(seeds[1], (), -0.35 * k, 0.35 * k)
  angle += tf.cast(_uniform(seeds[2]) < 0.1 * k, tf.float32) * math.pi  # upside-down captures
  centre = out_size / 2 + _uniform(seeds[3], (2,), -0.12 * k, 0.12 * k) * out_size
  rel = (src - tf.stack([(x0 + x1) / 2, (y0 + y1) / 2])) * scale
  rot = tf.stack([[tf.cos(angle), -tf.sin(angle)], [tf.sin(angle), tf.cos(angle)]])
  dst = tf.matmul(rel, rot, transpose_b=True) + centre
  dst += _uniform(seeds[4], (4, 2), -0.08 * k, 0.08 * k) * out_size  # perspective
  transform = augment.homography(dst, src)  # output pixel -> template pixel, as the op expects
  del s
  ones = tf.ones_like(img[..., :1])
  mask_src = tf.cast(tf.logical_and(
      tf.logical_and(tf.range(tf.shape(img)[1], dtype=tf.float32)[None, :, None] >= x0,
                     tf.range(tf.shape(img)[1], dtype=tf.float32)[None, :, None] < x1),
      tf.logical_and(tf.range(tf.shape(img)[0], dtype=tf.float32)[:, None, None] >= y0,
                     tf.range(tf.shape(img)[0], dtype=tf.float32)[:, None, None] < y1)), tf.float32)
  doc = _warp(img, transform, out_size)
  mask = _warp(mask_src * ones, transform, out_size)
  # Background: a colour with low-frequency variation (table, desk, hand).
  bg_colour = _uniform(seeds[5], (1, 1, 3), 0.0, 1.0)
  low = tf.image.resize(_uniform(seeds[6], (4, 4, 1), -0.25, 0.25), [out_size, out_size])
  bg = tf.clip_by_value(bg_colour + low, 0.0, 1.0)
  x = mask * doc + (1.0 - mask) * bg
  # Lighting: shadow over a half-plane, glare blob, colour cast, brightness/contrast.
  yy, xx = tf.meshgrid(tf.linspace(-1.0, 1.0, out_size), tf.linspace(-1.0, 1.0, out_size), indexing='ij')
  sh = _uniform(seeds[7], (4,), -1.0, 1.0)
  shadow = tf.sigmoid((sh[0] * xx + sh[1] * yy + sh[2] * 0.5) * 8.0)
  shadow_strength = k * tf.cast(_uniform(seeds[8]) < 0.5, tf.float32) * _uniform(seeds[9], (), 0.1,
                                                                                   0.5)
  x *= (1.0 - shadow_strength * shadow)[..., None]
  gl = _uniform(seeds[10], (4,), -1.0, 1.0)
  glare = tf.exp(-((xx - gl[0]) ** 2 + (yy - gl[1]) ** 2) / (0.02 + 0.1 * (gl[2] + 1.0)))
  glare_strength = k * tf.cast(_uniform(seeds[11]) < 0.4, tf.float32) * (0.5 + 0.5 * gl[3])
  x = x + glare_strength * glare[..., None] * (1.0 - x)
  cj = _uniform(seeds[12], (5,), -k, k)
  x = x * (1.0 + 0.15 * cj[:3]) + 0.1 * cj[3]
  x = (x - 0.5) * (1.0 + 0.3 * cj[4]) + 0.5
  # Optics and sensor: blur (defocus or motion-ish), noise.
  bl = _uniform(seeds[13], (2,))
  x = tf.cond(bl[0] < 0.5 * k, lambda: _gaussian_blur(x, 0.3 + 1.5 * bl[1]), lambda: x)
  x += tf.random.stateless_normal(tf.shape(x), seeds[14]) * _uniform(seeds[15], (), 0.0, 0.05 * k)
  x = tf.clip_by_value(x, 0.0, 1.0)
  # JPEG at a random quality (message apps and cheap scanners).
  worst = int(round(100 - 80 * min(k, 1.0)))  # quality 20..100 at full strength
  q = worst + tf.random.stateless_uniform((), seeds[0] + 7, 0, 101 - worst, dtype=tf.int32)
  x = tf.image.adjust_jpeg_quality(x, q)
  return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)


class SyntheticDocuments:
  """A fixed set of templates (classes) and the deterministic stream of their captures."""

  def __init__(self, template_ids, seed, template_size, image_size, capture_strength=1.0):
    self.template_ids = np.asarray(template_ids)
    self.seed = int(seed)
    self.image_size = int(image_size)
    self.capture_strength = float(capture_strength)
    images, boxes = render_templates(self.template_ids, seed, template_size)
    self._images = tf.constant(images)
    self._boxes = tf.constant(boxes)

  @property
  def num_classes(self):
    return len(self.template_ids)

  def example(self, index):
    """Capture number `index` (int64 scalar tensor): {'image', 'label'}."""
    seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(index, tf.int64)])
    s = tf.random.experimental.stateless_split(seed, 3)
    label = tf.random.stateless_uniform((), s[0], 0, self.num_classes, dtype=tf.int32)
    variant = tf.random.stateless_uniform((), s[1], 0, NUM_VARIANTS, dtype=tf.int32)
    template = self._images[label, variant]
    image = make_capture(template, self._boxes[label], s[2], self.image_size,
                         self.capture_strength)
    return {'image': image, 'label': label}

  def example_of(self, label, index):
    """Capture number `index` of a given class (for fixed evaluation sets).

    The class is folded into the seed: capture k of every class gets its own background, pose
    and lighting. (Seeding by `index` alone gave capture k of all classes the same ones, so
    different documents on the same background out-scored captures of one document.)
    """
    seed = tf.stack([tf.constant(self.seed, tf.int64) + 7919, tf.cast(index, tf.int64)])
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(label, tf.int64))
    s = tf.random.experimental.stateless_split(seed, 2)
    variant = tf.random.stateless_uniform((), s[0], 0, NUM_VARIANTS, dtype=tf.int32)
    template = self._images[label, variant]
    return make_capture(template, self._boxes[label], s[1], self.image_size,
                        self.capture_strength)


def train_templates(syn_config):
  return np.arange(syn_config.num_templates)


def heldout_templates(syn_config):
  # A disjoint id range: held-out templates are never rendered into the training set.
  start = 10_000_000
  return np.arange(start, start + syn_config.heldout_templates)


def heldout_set(syn_config, image_size):
  """Fixed eval set of held-out templates: images [N, H, W, 3] uint8, labels [N], is_register [N].

  The first capture of each template is its registered image, the rest are queries.
  """
  docs = SyntheticDocuments(heldout_templates(syn_config), syn_config.seed, syn_config.template_size,
                            image_size, syn_config.capture_strength)
  n = syn_config.heldout_captures
  labels = np.repeat(np.arange(docs.num_classes), n).astype(np.int32)
  indices = np.tile(np.arange(n), docs.num_classes)
  ds = tf.data.Dataset.from_tensor_slices((labels, indices)).map(
      docs.example_of, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  images = np.stack(list(ds.as_numpy_iterator()))
  return images, labels, indices == 0
