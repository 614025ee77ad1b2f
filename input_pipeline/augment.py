"""Document augmentation as in-graph TF ops: one example in, one augmented example out.

`augment_image(image, seed, cfg, image_size)` takes a decoded uint8 [h, w, 3] image of any size
and returns uint8 [image_size, image_size, 3]. Every random draw is stateless, folded from the
per-example `seed`, so an example's augmentation is a pure function of (run seed, example index):
a resumed run sees exactly the pixels an uninterrupted run would have seen.

Geometry is ONE projective warp (random resized crop + shift + rotation + perspective, straight
to the output resolution), so the expensive per-pixel work happens once, at the output size.
Photometric ops then run at image_size. Each op has a probability `<op>_prob` and a strength in
`cfg`, the `c.data.augment` block of configs/default.py, which documents each field.
"""
import math

import tensorflow as tf


# Fixed kernel size for all blurs: static shapes, one depthwise conv whatever the draw.
_BLUR_KERNEL = 9
# Op ids: fold_in constants so adding an op never changes another op's draws.
_OPS = {name: i for i, name in enumerate((
    'crop', 'rotate', 'perspective', 'color', 'grayscale', 'sepia', 'channel_shuffle',
    'invert', 'shadow', 'glare', 'occlusion', 'blur', 'noise', 'jpeg', 'fill'))}


def _seed(seed, name, k=0):
  return tf.random.experimental.stateless_fold_in(seed, _OPS[name] * 16 + k)


def _u(seed, name, k=0, shape=(), lo=0.0, hi=1.0):
  return tf.random.stateless_uniform(shape, _seed(seed, name, k), lo, hi)


def _maybe(seed, name, prob, fn, x):
  """Applies fn with probability prob (decided by the op's own stateless draw)."""
  if prob <= 0:
    return x
  return tf.cond(_u(seed, name, 15) < prob, lambda: fn(x), lambda: x)


# ---- Geometry ----

def homography(src, dst):
  """3x3 H (8 dof) with H @ [src, 1] ~ [dst, 1] for 4 point pairs; src, dst: [4, 2] float32."""
  rows = []
  rhs = []
  for i in range(4):
    x, y = src[i, 0], src[i, 1]
    u, v = dst[i, 0], dst[i, 1]
    rows.append(tf.stack([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y]))
    rows.append(tf.stack([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y]))
    rhs += [u, v]
  h = tf.linalg.solve(tf.stack(rows), tf.reshape(tf.stack(rhs), [8, 1]))
  return tf.reshape(h, [8])


def warp(image, seed, cfg, image_size):
  """Random resized crop + rotation + perspective in one projective warp to image_size^2."""
  shape = tf.cast(tf.shape(image), tf.float32)
  h, w = shape[0], shape[1]
  area = h * w * _u(seed, 'crop', 0, lo=cfg.crop_min_scale, hi=1.0)
  log_r = math.log(cfg.crop_max_ratio)
  ratio = tf.exp(_u(seed, 'crop', 1, lo=-log_r, hi=log_r))
  cw = tf.minimum(tf.sqrt(area * ratio), w)
  ch = tf.minimum(tf.sqrt(area / ratio), h)
  cx = cw / 2 + _u(seed, 'crop', 2) * (w - cw)
  cy = ch / 2 + _u(seed, 'crop', 3) * (h - ch)
  # Crop corners relative to the crop centre, clockwise from top-left.
  corners = tf.stack([[-cw / 2, -ch / 2], [cw / 2, -ch / 2], [cw / 2, ch / 2], [-cw / 2, ch / 2]])
  if cfg.perspective_prob > 0:
    jitter = _u(seed, 'perspective', 0, shape=(4, 2), lo=-1.0, hi=1.0)
    jitter *= cfg.perspective_strength * tf.stack([cw, ch])
    on = tf.cast(_u(seed, 'perspective', 15) < cfg.perspective_prob, tf.float32)
    corners += on * jitter
  if cfg.rotate_prob > 0:
    deg = _u(seed, 'rotate', 0, lo=-cfg.rotate_max_deg, hi=cfg.rotate_max_deg)
    theta = deg * (math.pi / 180.0) * tf.cast(_u(seed, 'rotate', 15) < cfg.rotate_prob,
                                                tf.float32)
    c, s = tf.cos(theta), tf.sin(theta)
    corners = tf.matmul(corners, tf.stack([[c, s], [-s, c]]))
  src_pts = corners + tf.stack([cx, cy])
  n = float(image_size)
  out_pts = tf.constant([[0.0, 0.0], [n, 0.0], [n, n], [0.0, n]])
  transform = homography(out_pts, src_pts)  # output pixel -> input pixel, as the op expects
  # Desk/background colour outside the page: one random grey level per example.
  fill = _u(seed, 'fill', 0, lo=0.0, hi=255.0)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=tf.cast(image, tf.float32)[None], transforms=transform[None],
      output_shape=tf.constant([image_size, image_size]), fill_value=fill,
      interpolation='BILINEAR', fill_mode='CONSTANT')
  return out[0]


# ---- Photometric ops on float32 [S, S, 3] in [0, 255] ----

_LUMA = tf.constant([0.299, 0.587, 0.114])
# RGB <-> YIQ: hue is a rotation of the (I, Q) chroma plane, saturation its scale.
_RGB2YIQ = tf.constant([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = tf.constant([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]])


def _color(x, seed, cfg):
  """Brightness, contrast, saturation and hue as ONE 3x3 matrix + offset (no HSV round trip)."""
  sat = _u(seed, 'color', 2, lo=1 - cfg.saturation, hi=1 + cfg.saturation)
  hue = _u(seed, 'color', 3, lo=-cfg.hue, hi=cfg.hue) * (2 * math.pi)
  c, s = tf.cos(hue) * sat, tf.sin(hue) * sat
  chroma = tf.stack([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
  m = tf.matmul(_YIQ2RGB, tf.matmul(chroma, _RGB2YIQ))   # acts on column vectors
  contrast = _u(seed, 'color', 1, lo=1 - cfg.contrast, hi=1 + cfg.contrast)
  brightness = _u(seed, 'color', 0, lo=-cfg.brightness, hi=cfg.brightness) * 255.0
  mean = tf.reduce_mean(tf.tensordot(x, _LUMA, axes=1))
  x = tf.tensordot(x, tf.transpose(m), axes=1)
  return (x - mean) * contrast + mean + brightness


def _grayscale(x):
  return tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3])


_SEPIA = tf.constant([[0.393, 0.349, 0.272], [0.769, 0.686, 0.534], [0.189, 0.168, 0.131]])


def _sepia(x):
  return tf.clip_by_value(tf.tensordot(x, _SEPIA, axes=1), 0.0, 255.0)


def _grid(size):
  """Pixel-centre coordinates in [0, 1]: ys, xs of shape [S, S, 1]."""
  r = (tf.range(size, dtype=tf.float32) + 0.5) / size
  ys, xs = tf.meshgrid(r, r, indexing='ij')
  return ys[..., None], xs[..., None]


def _shadow(x, seed, strength):
  """Darkens one side of a random line (a hand or phone over the page), with a soft edge."""
  ys, xs = _grid(x.shape[0])
  angle = _u(seed, 'shadow', 0, lo=0.0, hi=2 * math.pi)
  offset = _u(seed, 'shadow', 1, lo=-0.4, hi=0.4)
  softness = _u(seed, 'shadow', 2, lo=0.01, hi=0.15)
  dist = (xs - 0.5) * tf.cos(angle) + (ys - 0.5) * tf.sin(angle) - offset
  side = tf.sigmoid(dist / softness)
  dark = _u(seed, 'shadow', 3, lo=0.3, hi=1.0) * strength
  return x * (1.0 - dark * side)


def _glare(x, seed, strength):
  """Adds a bright soft blob: a lamp's reflection on glossy paper, or a sun flare."""
  ys, xs = _grid(x.shape[0])
  cy, cx = _u(seed, 'glare', 0), _u(seed, 'glare', 1)
  sigma = _u(seed, 'glare', 2, lo=0.05, hi=0.35)
  peak = _u(seed, 'glare', 3, lo=0.3, hi=1.0) * strength * 255.0
  blob = tf.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
  return tf.minimum(x + peak * blob, 255.0)


def _occlusion(x, seed, max_size):
  """A box of one random colour (a finger, a sticker, a clip)."""
  ys, xs = _grid(x.shape[0])
  bh = _u(seed, 'occlusion', 0, lo=0.05, hi=max_size)
  bw = _u(seed, 'occlusion', 1, lo=0.05, hi=max_size)
  y0 = _u(seed, 'occlusion', 2, hi=1.0 - bh)
  x0 = _u(seed, 'occlusion', 3, hi=1.0 - bw)
  inside = tf.cast((ys >= y0) & (ys < y0 + bh) & (xs >= x0) & (xs < x0 + bw), tf.float32)
  colour = _u(seed, 'occlusion', 4, shape=(3,), hi=255.0)
  return x * (1.0 - inside) + colour * inside


def _blur_kernel(seed, strength):
  """A normalised [K, K] kernel: gaussian, defocus (disk) or motion (line), chosen at random."""
  r = tf.range(_BLUR_KERNEL, dtype=tf.float32) - (_BLUR_KERNEL - 1) / 2
  ky, kx = tf.meshgrid(r, r, indexing='ij')
  amount = _u(seed, 'blur', 0, lo=0.3, hi=1.0) * strength
  max_r = (_BLUR_KERNEL - 1) / 2
  amount = tf.minimum(amount, max_r)
  gaussian = tf.exp(-(kx ** 2 + ky ** 2) / (2 * amount ** 2))
  disk = tf.sigmoid((amount + 0.5 - tf.sqrt(kx ** 2 + ky ** 2)) * 4.0)
  angle = _u(seed, 'blur', 1, lo=0.0, hi=math.pi)
  along = kx * tf.cos(angle) + ky * tf.sin(angle)
  across = -kx * tf.sin(angle) + ky * tf.cos(angle)
  motion = tf.exp(-across ** 2 / 0.5) * tf.sigmoid((2 * amount + 0.5 - tf.abs(along)) * 4.0)
  kind = tf.cast(tf.floor(_u(seed, 'blur', 2, lo=0.0, hi=3.0 - 1e-6)), tf.int32)
  k = tf.stack([gaussian, disk, motion])[kind]
  return k / tf.reduce_sum(k)


def _blur(x, seed, strength):
  k = _blur_kernel(seed, strength)
  k = tf.tile(k[:, :, None, None], [1, 1, 3, 1])
  return tf.nn.depthwise_conv2d(x[None], k, [1, 1, 1, 1], 'SAME')[0]


def _noise(x, seed, strength):
  """Gaussian noise, or ISO-like noise (brightness-dependent luma + colour speckle)."""
  sigma = _u(seed, 'noise', 0, lo=0.2, hi=1.0) * strength * 255.0
  n = tf.random.stateless_normal(tf.concat([tf.shape(x)[:2], [4]], 0), _seed(seed, 'noise', 1))
  rgb, luma = n[..., :3], n[..., 3:]
  iso = tf.cast(_u(seed, 'noise', 2) < 0.5, tf.float32)
  # ISO: shot noise grows with the signal (sqrt), shared luma plus weaker per-channel speckle.
  scale = iso * tf.sqrt(tf.maximum(x, 1.0) / 255.0) + (1.0 - iso)
  return x + sigma * scale * (rgb + iso * (0.7 * luma - 0.5 * rgb))


def _jpeg(x, seed, min_quality):
  q = tf.cast(_u(seed, 'jpeg', 0, lo=float(min_quality), hi=100.0), tf.int32)
  img = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)
  return tf.cast(tf.image.adjust_jpeg_quality(img, q), tf.float32)


def _channel_shuffle(x, seed):
  perm = tf.random.experimental.stateless_shuffle(tf.range(3), _seed(seed, 'channel_shuffle'))
  return tf.gather(x, perm, axis=-1)


def augment_image(image, seed, cfg, image_size):
  """uint8 [h, w, 3] (any size) -> uint8 [image_size, image_size, 3]. seed: int [2]."""
  seed = tf.cast(seed, tf.int64)
  image = _prefilter(image, image_size)
  x = warp(image, seed, cfg, image_size)
  x = _maybe(seed, 'color', cfg.color_prob, lambda v: _color(v, seed, cfg), x)
  x = _maybe(seed, 'grayscale', cfg.grayscale_prob, _grayscale, x)
  x = _maybe(seed, 'sepia', cfg.sepia_prob, _sepia, x)
  x = _maybe(seed, 'channel_shuffle', cfg.channel_shuffle_prob,
             lambda v: _channel_shuffle(v, seed), x)
  x = _maybe(seed, 'invert', cfg.invert_prob, lambda v: 255.0 - v, x)
  x = _maybe(seed, 'shadow', cfg.shadow_prob, lambda v: _shadow(v, seed, cfg.shadow_strength), x)
  x = _maybe(seed, 'glare', cfg.glare_prob, lambda v: _glare(v, seed, cfg.glare_strength), x)
  x = _maybe(seed, 'occlusion', cfg.occlusion_prob,
             lambda v: _occlusion(v, seed, cfg.occlusion_max_size), x)
  x = _maybe(seed, 'blur', cfg.blur_prob, lambda v: _blur(v, seed, cfg.blur_strength), x)
  x = _maybe(seed, 'noise', cfg.noise_prob, lambda v: _noise(v, seed, cfg.noise_strength), x)
  x = tf.clip_by_value(x, 0.0, 255.0)
  x = _maybe(seed, 'jpeg', cfg.jpeg_prob, lambda v: _jpeg(v, seed, cfg.jpeg_min_quality), x)
  x = tf.ensure_shape(x, [image_size, image_size, 3])
  return tf.cast(tf.round(x), tf.uint8)


def _prefilter(image, image_size):
  """Area-downsizes images much larger than the output, so the bilinear warp does not alias."""
  shape = tf.shape(image)
  longest = tf.cast(tf.maximum(shape[0], shape[1]), tf.float32)
  limit = 2.0 * image_size

  def shrink():
    scale = limit / longest
    size = tf.cast(tf.round(tf.cast(shape[:2], tf.float32) * scale), tf.int32)
    size = tf.maximum(size, 1)
    return tf.cast(tf.image.resize(image, size, method='area'), tf.uint8)

  return tf.cond(longest > limit, shrink, lambda: tf.cast(image, tf.uint8))


def resize_only(image, image_size):
  """The no-augmentation path: the whole image, stretched to image_size^2 (area filter)."""
  x = tf.image.resize(image, [image_size, image_size], method='area', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)


def process(image, seed, cfg, image_size):
  """What every source calls: augmentation when cfg.enabled, else a plain resize."""
  if cfg is not None and cfg.enabled:
    return augment_image(image, seed, cfg, image_size)
  return resize_only(image, image_size)
