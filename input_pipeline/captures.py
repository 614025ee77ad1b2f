"""What a phone or a scanner makes of a page: in-graph TF ops, stateless from a per-example seed.

`capture(page, box, seed, out_size, strength)` -> (uint8 [out_size, out_size, 3], corners [4, 2]).
Three kinds of capture, as users make them and as inference sees them (the whole image
stretched to a square, inference/images.py):
- clean (the render as a PDF viewer or a perfect scan shows it; what users register): the page
  fills the frame;
- scan: the page nearly fills the frame, with skew, a margin of scanner lid or a cut edge,
  grey or binarised or fax-like, speckle, JPEG;
- photo: the page on a desk, a keyboard, a table or another paper, in a 3:4 / 4:3 frame, with
  perspective, rotation, a thumb, shadow, glare, uneven light, colour cast, blur, sensor noise,
  JPEG.
`corners` are the page's corners in output pixels, clockwise from its top-left (the corner
detector of issue 15 learns from them). `strength` (0..1) scales every degradation.
"""
import math

import tensorflow as tf

from input_pipeline import augment

P_CLEAN, P_SCAN = 0.15, 0.45  # the rest are photos


def _u(seed, k, shape=(), lo=0.0, hi=1.0):
  return tf.random.stateless_uniform(shape, tf.random.experimental.stateless_fold_in(seed, k), lo, hi)


def _grid(size):
  r = (tf.range(size, dtype=tf.float32) + 0.5) / size
  ys, xs = tf.meshgrid(r, r, indexing='ij')
  return ys[..., None], xs[..., None]


def _warp(image, dst, src, out_size, fill=0.0):
  """Samples `image` so that its points src [4, 2] land on dst [4, 2] (output px)."""
  t = augment.homography(dst, src)  # output pixel -> source pixel, as the op expects
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=t[None], output_shape=[out_size, out_size],
      fill_value=fill, interpolation='BILINEAR', fill_mode='CONSTANT')[0]


def _place(page, box, corners, out_size):
  """The page (its box cut out of the square canvas) warped onto corners, and its coverage mask.

  The page is first area-shrunk near the size it takes in the output, so the bilinear warp does
  not alias its text."""
  b = tf.cast(tf.round(box), tf.int32)
  page = tf.cast(page[b[1]:b[3], b[0]:b[2]], tf.float32)
  hw = tf.cast(tf.shape(page)[:2], tf.float32)
  span = tf.reduce_max(tf.reduce_max(corners, 0) - tf.reduce_min(corners, 0))
  f = tf.minimum(1.25 * span / tf.reduce_max(hw), 1.0)
  size = tf.maximum(tf.cast(tf.round(hw * f), tf.int32), 2)
  page = tf.image.resize(page, size, 'area')
  h, w = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
  src = tf.stack([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
  return (_warp(page, corners, src, out_size),
          _warp(tf.ones_like(page[..., :1]), corners, src, out_size))


def _page_corners(seed, box, out_size, mode, k):
  """dst corners [4, 2] of the page in the output (clockwise from top-left)."""
  x0, y0, x1, y1 = box[0], box[1], box[2], box[3]
  page_aspect = (y1 - y0) / (x1 - x0)
  s = float(out_size)
  unit = tf.constant([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
  # Scan: the frame is the page plus a margin or minus a cut edge, skewed by a degree or two.
  inset = _u(seed, 0, (4, 2), -0.03 * k, 0.07 * k)
  inset *= tf.constant([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
  skew = _u(seed, 1, (), -0.04, 0.04) * k
  scan = unit + inset
  scan = tf.stack([scan[:, 0] + skew * (scan[:, 1] - 0.5), scan[:, 1] - skew * (scan[:, 0] - 0.5)], 1)
  # Photo: the page in a 3:4 or 4:3 frame (portrait pages mostly in portrait frames), then the
  # frame stretched to the square as inference stretches a photo.
  portrait = tf.cast(page_aspect > 1.0, tf.float32)
  flip = tf.cast(_u(seed, 2) < 0.2, tf.float32)
  portrait = portrait * (1 - flip) + (1 - portrait) * flip
  frame_aspect = 0.75 + portrait * (4.0 / 3.0 - 0.75)  # height / width of the frame
  fill = _u(seed, 3, (), 0.92 - 0.47 * k, 0.97)  # page's long side / frame's matching side
  pw = tf.minimum(fill / tf.maximum(page_aspect / frame_aspect, 1.0), fill)  # frame widths
  ph = pw * page_aspect
  angle = _u(seed, 4, (), -0.3, 0.3) * k
  rel = (unit - 0.5) * tf.stack([pw, ph])
  rot = tf.stack([[tf.cos(angle), -tf.sin(angle)], [tf.sin(angle), tf.cos(angle)]])
  centre = tf.stack([0.5, 0.5 * frame_aspect]) + _u(seed, 5, (2,), -0.12, 0.12) * k * (1.0 - fill)
  photo = tf.matmul(rel, rot, transpose_b=True) + centre
  photo += _u(seed, 6, (4, 2), -0.07, 0.07) * k * tf.maximum(pw, ph)  # perspective
  photo /= tf.stack([1.0, frame_aspect])
  return tf.stack([unit, scan, photo])[mode] * s


def _clutter(x, seed, out_size, count):
  """Up to `count` things lying on the desk: pens, sticky notes, a mouse, a phone (solid shapes
  of random colour, rectangles or ellipses, shaded across their width)."""
  ys, xs = _grid(out_size)
  for i in range(count):
    s = tf.random.experimental.stateless_fold_in(seed, 60 + i)
    c, a = _u(s, 0, (2,), -0.1, 1.1), _u(s, 1, (), 0.0, 2 * math.pi)
    length = _u(s, 2, (), 0.04, 0.25)
    width = length * _u(s, 3, (), 0.06, 1.0)
    u = (xs - c[0]) * tf.cos(a) + (ys - c[1]) * tf.sin(a)
    v = (ys - c[1]) * tf.cos(a) - (xs - c[0]) * tf.sin(a)
    rect = (tf.abs(u) < length) & (tf.abs(v) < width)
    ellipse = (u / length) ** 2 + (v / width) ** 2 < 1.0
    inside = tf.where(_u(s, 4) < 0.35, ellipse, rect) & (_u(s, 5) < 0.7)
    colour = _u(s, 6, (3,), 0.0, 255.0) * (1.0 - 0.35 * tf.abs(v / width))
    x = tf.where(inside, colour, x)
  return x


def _keyboard(seed, out_size):
  """A computer keyboard at a random angle: rows of keys (staggered, of varying width, the
  longer rows of function keys among them) with their labels, dark keys with light labels or
  light keys with dark ones, in [0, 1]. A card on a keyboard is a common phone photo, and the
  rows' long straight edges beside the card's edge are where a detector's corner goes astray
  (the MIDV frames on keyboards)."""
  ys, xs = _grid(out_size)
  a = _u(seed, 70, (), -0.5, 0.5)
  u = xs * tf.cos(a) + ys * tf.sin(a) + _u(seed, 71, (), 0.0, 1.0)
  v = ys * tf.cos(a) - xs * tf.sin(a) + _u(seed, 72, (), 0.0, 1.0)
  pitch = _u(seed, 73, (), 0.04, 0.11)                      # key pitch, in frame widths
  row = tf.floor(v / pitch)
  # Each row staggered and with its own key width (function-key rows, the space bar row).
  row_seed = tf.math.floormod(row * 7.31 + 3.7, 11.0) / 11.0
  width = pitch * (1.0 + 0.6 * tf.cast(row_seed > 0.7, tf.float32) + 3.0 * tf.cast(row_seed < 0.08, tf.float32))
  ku = (u + row_seed * pitch) / width
  col = tf.floor(ku)
  fu, fv = ku - col, v / pitch - row
  gap = _u(seed, 74, (), 0.06, 0.16)
  face = (fu > gap) & (fu < 1.0 - gap) & (fv > gap) & (fv < 1.0 - gap)
  light = _u(seed, 75) < 0.3
  key_tone = tf.where(light, _u(seed, 76, (), 0.7, 0.92), _u(seed, 76, (), 0.05, 0.22))
  gap_tone = tf.where(light, key_tone - _u(seed, 77, (), 0.1, 0.35), key_tone * _u(seed, 77, (), 0.3, 0.8))
  # A label: a glyph-like patch of strokes in the key's upper left, different on every key.
  h = tf.math.floormod(col * 12.9898 + row * 78.233, 6.2831)
  lu, lv = (fu - 0.22) / 0.35, (fv - 0.2) / 0.4
  in_label = (lu > 0) & (lu < 1) & (lv > 0) & (lv < 1)
  strokes = tf.sin(6.0 * lu * (2.0 + tf.sin(h)) + 9.0 * h) * tf.sin(5.0 * lv * (2.0 + tf.cos(h)) + h)
  label = in_label & (tf.abs(strokes) > 0.75)
  label_tone = tf.where(light, 0.1, 0.85) * tf.ones_like(fu)
  shade = 0.06 * (0.5 - fv)                                  # keys lit from above
  x = tf.where(face, key_tone + shade, gap_tone * tf.ones_like(fu))
  x = tf.where(face & label, label_tone, x)
  return tf.tile(x, [1, 1, 3]) * _u(seed, 78, (1, 1, 3), 0.9, 1.05)


def _background(seed, out_size, other, other_box, paper_prob=0.25, clutter=0):
  """A desk, a table, a keyboard, fabric, or (with paper_prob) another paper lying beneath;
  with `clutter`, up to that many things lying on it."""
  ys, xs = _grid(out_size)
  base = _u(seed, 10, (1, 1, 3))
  wood = tf.constant([[[0.55, 0.38, 0.22]]]) * _u(seed, 11, (), 0.5, 1.4)
  kind = tf.cast(tf.floor(_u(seed, 12, (), 0.0, 4.0)), tf.int32)
  low = tf.image.resize(_u(seed, 13, (4, 4, 1), -0.2, 0.2), [out_size, out_size])
  freq = _u(seed, 14, (), 20.0, 90.0)
  grain = 0.12 * tf.sin(freq * (ys + 0.05 * tf.sin(7.0 * xs + 3.0 * base[..., :1])))
  texture = tf.random.stateless_normal([out_size, out_size, 1],
                                       tf.random.experimental.stateless_fold_in(seed, 16)) * 0.06
  # The keyboard mostly ends somewhere in the frame, on the desk: another long straight edge.
  edge_a = _u(seed, 79, (), 0.0, 2 * math.pi)
  off_edge = (xs - 0.5) * tf.cos(edge_a) + (ys - 0.5) * tf.sin(edge_a) > _u(seed, 80, (), -0.9, 0.45)
  keyboard = tf.where(off_edge, tf.clip_by_value(wood + grain, 0.0, 1.0), _keyboard(seed, out_size))
  bgs = tf.stack([base + low, wood + low + grain, keyboard + 0.3 * low, base + texture + low])
  bg = tf.clip_by_value(bgs[kind], 0.0, 1.0) * 255.0
  # Another paper beneath, at a random place and angle (several papers in view).
  c = _u(seed, 17, (2,), 0.0, 1.0) * out_size
  a = _u(seed, 18, (), 0.0, 2 * math.pi)
  half = tf.constant([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]) * out_size * 0.8
  rot = tf.stack([[tf.cos(a), -tf.sin(a)], [tf.sin(a), tf.cos(a)]])
  dst = tf.matmul(half, rot, transpose_b=True) + c
  paper, mask = _place(other, other_box, dst, out_size)
  with_paper = mask * paper + (1.0 - mask) * bg
  bg = tf.cond(_u(seed, 19) < paper_prob, lambda: with_paper, lambda: bg)
  return _clutter(bg, seed, out_size, clutter) if clutter else bg


def _thumb(x, seed, corners, out_size):
  """A skin-coloured ellipse over one edge of the page (the hand holding it)."""
  ys, xs = _grid(out_size)
  i = tf.cast(tf.floor(_u(seed, 20, (), 0.0, 4.0 - 1e-6)), tf.int32)
  a, b = tf.gather(corners, i), tf.gather(corners, (i + 1) % 4)
  c = (a + (b - a) * _u(seed, 21, (), 0.2, 0.8)) / out_size
  r = _u(seed, 22, (2,), 0.05, 0.12)
  inside = ((xs - c[0]) / r[0]) ** 2 + ((ys - c[1]) / r[1]) ** 2 < 1.0
  skin = tf.stack([_u(seed, 23, (), 150, 240), _u(seed, 24, (), 100, 190), _u(seed, 25, (), 80, 160)])
  return tf.where(inside, skin, x)


def _scan_effects(x, seed, k):
  """Grey scans, binarisation, fax-like resolution, speckle."""
  gray = tf.tile(tf.reduce_mean(x, -1, keepdims=True), [1, 1, 3])
  x = tf.cond(_u(seed, 30) < 0.5, lambda: gray, lambda: x)
  size = x.shape[0]

  def binarise(v, t):
    g = tf.reduce_mean(v, -1, keepdims=True)
    return tf.tile(tf.cast(g > t, tf.float32) * 255.0, [1, 1, 3])

  t = _u(seed, 31, (), 120.0, 200.0)
  x = tf.cond(_u(seed, 32) < 0.15 * k, lambda: binarise(x, t), lambda: x)
  fax = lambda v: binarise(tf.image.resize(tf.image.resize(v, [size // 2, size // 2], 'area'),
                                           [size, size], 'nearest'), t)
  x = tf.cond(_u(seed, 33) < 0.08 * k, lambda: fax(x), lambda: x)
  speckle = _u(seed, 34, (size, size, 1))
  amount = _u(seed, 35, (), 0.0, 0.004) * k
  x = tf.where(speckle < amount, 0.0, x)
  x = tf.where(speckle > 1.0 - amount * 0.5, 255.0, x)
  return x * _u(seed, 36, (), 1.0, 1.0 + 0.15 * k)  # scanners over-expose the paper


def _photo_light(x, seed, k):
  """Uneven light, the shadow of a phone or a hand, glare, a colour cast, vignetting."""
  ys, xs = _grid(x.shape[0])
  g = _u(seed, 40, (3,), -1.0, 1.0)
  x *= 1.0 + 0.25 * k * (g[0] * (xs - 0.5) + g[1] * (ys - 0.5))
  x = tf.cond(_u(seed, 41) < 0.45 * k, lambda: augment._shadow(x, seed, 0.6 * k), lambda: x)  # pylint: disable=protected-access
  x = tf.cond(_u(seed, 42) < 0.3 * k, lambda: augment._glare(x, tf.random.experimental.stateless_fold_in(seed, 43), 0.8 * k), lambda: x)  # pylint: disable=protected-access
  warm = _u(seed, 44, (), -1.0, 1.0) * 0.12 * k
  x *= tf.stack([1.0 + warm, 1.0, 1.0 - warm])
  vignette = 1.0 - 0.35 * k * _u(seed, 45) * ((xs - 0.5) ** 2 + (ys - 0.5) ** 2) * 2.0
  return x * vignette


def capture(page, box, seed, out_size, strength=1.0, other=None, other_box=None, corners=None,
            paper_prob=0.25, clutter=0, mode=None):
  """page: uint8 [S, S, 3] (a rendered copy in its square canvas); box: [4] float (x0, y0, x1, y1);
  seed: int [2]; other / other_box: another page for the background (or None).
  corners: None, or the page's corners [4, 2] in output px, chosen by the caller (the corner
  detector's photo geometry, input_pipeline/corner_data.py): the capture is then a photo.
  paper_prob: share of photo backgrounds with another paper beneath; clutter: up to that many
  things lying on the desk (_clutter). mode: with `corners`, 0 (clean), 1 (scan) or 2 (photo,
  the default) for the effects applied around them.
  Returns (uint8 [out_size, out_size, 3], corners float32 [4, 2] in output px)."""
  k = float(strength)
  seed = tf.cast(seed, tf.int64)
  box = tf.cast(box, tf.float32)
  draw = _u(seed, 50)
  if corners is None:
    mode = tf.where(draw < P_CLEAN, 0, tf.where(draw < P_CLEAN + P_SCAN, 1, 2))
    corners = _page_corners(seed, box, out_size, mode, k)
  else:  # the caller's geometry, and its mode (a photo unless it says)
    mode = tf.constant(2) if mode is None else tf.cast(mode, tf.int32)
    corners = tf.cast(corners, tf.float32)
  doc, mask = _place(page, box, corners, out_size)
  if other is None:
    other, other_box = page, box
  lid = tf.ones([out_size, out_size, 3]) * tf.where(_u(seed, 51) < 0.75, 245.0, 30.0)
  bg = tf.where(mode == 1, lid, _background(seed, out_size, other, tf.cast(other_box, tf.float32),
                                            paper_prob, clutter))
  x = mask * doc + (1.0 - mask) * bg

  def photo(v):
    v = tf.cond(_u(seed, 52) < 0.2 * k, lambda: _thumb(v, seed, corners, out_size), lambda: v)
    return _photo_light(v, seed, k)

  x = tf.switch_case(mode, [lambda: x, lambda: _scan_effects(x, seed, k), lambda: photo(x)])
  # Optics and sensor for scans and photos alike (a clean render stays clean).
  blur = lambda v: augment._blur(v, tf.random.experimental.stateless_fold_in(seed, 53), 1.6 * k)  # pylint: disable=protected-access
  x = tf.cond((mode > 0) & (_u(seed, 54) < 0.4 * k), lambda: blur(x), lambda: x)
  noise = lambda v: augment._noise(v, tf.random.experimental.stateless_fold_in(seed, 55), 0.05 * k)  # pylint: disable=protected-access
  x = tf.cond((mode > 0) & (_u(seed, 56) < 0.5 * k), lambda: noise(x), lambda: x)
  x = tf.clip_by_value(x, 0.0, 255.0)
  worst = int(round(100 - 75 * min(k, 1.0)))
  x = tf.cond((mode > 0) & (_u(seed, 57) < 0.6),
              lambda: augment._jpeg(x, tf.random.experimental.stateless_fold_in(seed, 58), worst),  # pylint: disable=protected-access
              lambda: x)
  x = tf.ensure_shape(x, [out_size, out_size, 3])
  return tf.cast(tf.round(x), tf.uint8), corners
