"""Flattening a photographed document before it is embedded (issue 15), numpy + Pillow only.

`rectify(rgb, quad)` warps the quadrilateral `quad` ([4, 2] pixel corners, clockwise from the
document's top-left) to an upright rectangle whose aspect is the quad's (mean lengths of its
opposite sides), so a portrait page comes out portrait and a landscape card landscape, its
top-left corner at the top-left. A quad that cannot be a document's outline (inference/quads.py
`quad_problem`: not convex, mirrored, tiny, nearly a triangle) is refused with InputError,
never warped.

`rectify_or_whole(rgb, detection, min_confidence)` is what inference does with a detector's answer:
the rectified document when the detector is confident and its quad sound, else the whole photo,
with a reason that says why it was not rectified.
"""
import numpy as np
from PIL import Image, ImageFilter

from errors import InputError
from inference import quads
from inference.detector import DEFAULT_SHAPE_PRIOR, DEFAULT_ZOOM

MAX_SIDE = 1024  # px, longest side of a rectified image (the embedder sees 224 or less)


def rectified_size(quad, max_side=MAX_SIDE):
  """(width, height) of the upright rectangle for `quad`: mean lengths of opposite sides, scaled
  down so that the longest side is at most max_side."""
  q = np.asarray(quad, np.float64)
  side = lambda i, j: np.linalg.norm(q[i] - q[j])
  w, h = 0.5 * (side(0, 1) + side(3, 2)), 0.5 * (side(0, 3) + side(1, 2))
  scale = min(1.0, max_side / max(w, h))
  return max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)


def rectify(rgb, quad, max_side=MAX_SIDE, square=None):
  """uint8 [H, W, 3] and a quad in its pixels -> uint8 [h, w, 3], the document upright.

  square: an int to warp straight to [square, square], which is what the embedder's 'stretch'
  preprocessing makes of the upright page, in one resampling instead of a warp to the page's
  own size and then a resize (2-3x faster on phone photos; benchmarks/rectify_speed.py). The
  bilinear warp samples; it does not average. So where the page's longest side spans two or
  more times `square` photo pixels, the photo is first shrunk by that whole factor (Pillow's
  reduce, a box average), keeping each output pixel's step across the photo under two pixels.
  """
  height, width = rgb.shape[:2]
  problem = quads.quad_problem(quad, width, height)
  if problem:
    raise InputError(f'cannot rectify: the document outline is degenerate ({problem})')
  photo, quad = Image.fromarray(rgb), np.asarray(quad, np.float64)
  if square:
    w = h = int(square)
    factor = int(max(rectified_size(quad, max_side=np.inf)) // square)
    if factor >= 2:
      photo, quad = photo.reduce(factor), quad / factor
  else:
    w, h = rectified_size(quad, max_side)
  rect = quads.frame_quad(w, h)
  # Pillow wants the map from output to input pixels (continuous coordinates, corner at 0).
  coeffs = quads.homography(rect, quad).flatten()[:8]
  out = photo.transform((w, h), Image.Transform.PERSPECTIVE, tuple(coeffs), Image.BILINEAR)
  return np.asarray(out, np.uint8)


def rectify_or_whole(rgb, detection, min_confidence, square=None):
  """(image to embed, info); square as in rectify. detection: {'quad': [4, 2] px, 'confidence': float in [0, 1]}.
  info: {'rectified': bool, 'quad', 'confidence', and 'reason' when the whole photo is used}."""
  quad = np.asarray(detection['quad'], np.float64)
  info = {'rectified': False, 'quad': [[round(float(x), 1), round(float(y), 1)] for x, y in quad],
          'confidence': round(float(detection['confidence']), 4)}
  if detection['confidence'] < min_confidence:
    info['reason'] = (f'no document found with confidence (detector {detection["confidence"]:.2f} '
                      f'< {min_confidence:.2f}): the whole photo was embedded')
    return rgb, info
  problem = quads.quad_problem(quad, rgb.shape[1], rgb.shape[0])
  if problem:
    info['reason'] = f'the detected outline is degenerate ({problem}): the whole photo was embedded'
    return rgb, info
  info['rectified'] = True
  return rectify(rgb, quad, square=square), info


def _bilinear(img, xs, ys, origin=(0, 0), full_shape=None):
  """img sampled at (xs, ys), bilinear. img may be a crop of a larger image of `full_shape`
  whose pixel (x, y) is img[y - origin[1], x - origin[0]]: the points are clamped to the full
  image, as without the crop, so the values are the same as on the full image."""
  h, w = full_shape or img.shape
  xs, ys = np.clip(xs, 0, w - 1.001), np.clip(ys, 0, h - 1.001)
  x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
  fx, fy = xs - x0, ys - y0
  x0, y0 = x0 - origin[0], y0 - origin[1]
  return ((img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx) * (1 - fy) +
          (img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx) * fy)


def _fit_line(points):
  """(point, unit direction) of the total-least-squares line through points [N, 2]."""
  centre = points.mean(0)
  _, _, vt = np.linalg.svd(points - centre)
  return centre, vt[0]


# Pillow's GaussianBlur(1.2) is three box passes of radius under 1 px: a pixel's blurred value
# depends on pixels at most 3 px away. A crop this much wider than the pixels read blurs to the
# same values there.
BLUR_SIGMA, BLUR_MARGIN = 1.2, 8


def _read_box(xs, ys, small_size, margin=BLUR_MARGIN):
  """(x0, y0, x1, y1) of the working image (small_size: width, height) that refine_quad reads
  for points (xs, ys): their bounding box, clamped as _bilinear clamps, +1 for the bilinear
  neighbours, and the blur's margin."""
  w, h = small_size
  x0 = int(np.floor(np.clip(xs.min(), 0, w - 1.001))) - margin
  y0 = int(np.floor(np.clip(ys.min(), 0, h - 1.001))) - margin
  x1 = int(np.floor(np.clip(xs.max(), 0, w - 1.001))) + 2 + margin
  y1 = int(np.floor(np.clip(ys.max(), 0, h - 1.001))) + 2 + margin
  return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def _edge_image(rgb, small_size, box):
  """The photo scaled to small_size (bilinear), grey, blurred, as float32 over `box` of it, and
  the crop's origin. Only that part is greyed and blurred, with the same values as the whole
  image's there. The resize stays whole: Pillow's resize of a box of the photo (aligned to the
  output grid) rounded some pixels one level off the whole resize's (its fixed-point weights
  depend on the whole set of filter weights), so only the blur is cropped."""
  x0, y0, x1, y1 = box
  if small_size == rgb.shape[1::-1]:
    small = Image.fromarray(rgb[y0:y1, x0:x1])
  else:
    small = Image.fromarray(rgb).resize(small_size, Image.BILINEAR).crop(box)
  gray = small.convert('L').filter(ImageFilter.GaussianBlur(BLUR_SIGMA))
  return np.asarray(gray, np.float32), (x0, y0)


def refine_quad(rgb, quad, search=0.06, samples=40, work_side=640):
  """Snaps each side of a detected quad to the strongest straight edge near it (classical,
  numpy): along the side, the largest brightness step across it within +-`search` of the
  document's diagonal; a robust line through those points; the corners where adjacent lines
  meet. A side without a clear edge, or a corner that would move further than the search
  range, keeps the detector's answer. Works on the photo scaled to `work_side` px, greyed and
  blurred where the sides are searched (_edge_image)."""
  quad = np.asarray(quad, np.float64)
  if quads.quad_problem(quad, rgb.shape[1], rgb.shape[0]):
    return quad
  scale = min(1.0, work_side / max(rgb.shape[:2]))
  small_size = ((max(int(rgb.shape[1] * scale), 1), max(int(rgb.shape[0] * scale), 1))
                if scale != 1.0 else tuple(rgb.shape[1::-1]))
  q = quad * scale
  reach = search * quads.document_diagonal(q)
  offsets = np.linspace(-reach, reach, max(int(2 * reach), 8) + 1)
  sides = []
  for i in range(4):  # where each side is searched: points along it, across it
    a, b = q[i], q[(i + 1) % 4]
    along = (b - a) / np.linalg.norm(b - a)
    normal = np.array([along[1], -along[0]])  # points out of a clockwise quad (y down)
    t = np.linspace(0.12, 0.88, samples)[:, None]
    base = a + t * (b - a)                                  # [S, 2]
    pts = base[:, None, :] + offsets[None, :, None] * normal  # [S, O, 2]
    sides.append((base, normal, pts))
  every = np.concatenate([pts.reshape(-1, 2) for _, _, pts in sides])
  gray, origin = _edge_image(rgb, small_size, _read_box(every[:, 0], every[:, 1], small_size))
  lines = []
  for base, normal, pts in sides:
    profile = _bilinear(gray, pts[..., 0], pts[..., 1], origin, small_size[::-1])  # [S, O]
    step = np.abs(np.diff(profile, axis=1))                 # [S, O - 1]
    best = np.argmax(step, axis=1)
    strength = step[np.arange(samples), best]
    keep = strength > max(8.0, 0.5 * np.median(strength))
    if keep.sum() < samples // 3:
      lines.append(None)
      continue
    mid = 0.5 * (offsets[best] + offsets[best + 1])
    found = base + mid[:, None] * normal
    points = found[keep]
    centre, direction = _fit_line(points)
    for _ in range(2):  # drop points far from the line, refit
      dist = np.abs((points - centre) @ np.array([direction[1], -direction[0]]))
      inliers = dist < max(1.0, 2.0 * np.median(dist) + 0.5)
      if inliers.sum() < samples // 3:
        break
      points = points[inliers]
      centre, direction = _fit_line(points)
    lines.append((centre, direction))
  out = q.copy()
  for i in range(4):  # corner i is where side i-1 (into it) meets side i (out of it)
    l0, l1 = lines[i - 1], lines[i]
    if l0 is None or l1 is None:
      continue
    m = np.stack([l0[1], -l1[1]], 1)
    if abs(np.linalg.det(m)) < 1e-3:
      continue
    s = np.linalg.solve(m, l1[0] - l0[0])
    corner = l0[0] + s[0] * l0[1]
    if np.linalg.norm(corner - q[i]) <= 1.5 * reach:
      out[i] = corner
  out /= scale
  return quad if quads.quad_problem(out, rgb.shape[1], rgb.shape[0]) else out


DEFAULT_MIN_CONFIDENCE = 0.5


def model_square(preprocessing):
  """The side rectify can warp straight to for a model with this preprocessing, or None: only
  'stretch' squashes the upright page to the square ('pad' needs the page's own aspect)."""
  if preprocessing.get('resize', 'stretch') == 'stretch':
    return int(preprocessing['image_size'])
  return None


def rectify_record(detector, min_confidence=DEFAULT_MIN_CONFIDENCE, square=None,
                   zoom=DEFAULT_ZOOM, shape_prior=DEFAULT_SHAPE_PRIOR):
  """What a registry and an embedding record about rectification (in the preprocessing dict, so
  that rectified and whole-photo embeddings are never compared: inference/registry.py refuses a
  model whose preprocessing differs from the registry's). 'warp': 'direct' says the page was
  warped straight to the model's square (rectify's `square`), which gives slightly other pixels
  than a warp to the page's own size and a resize (no 'warp' key: registries made before).
  'zoom': the detector's second pass on the crop around its first quad (inference/detector.py;
  no 'zoom' key: one pass, as registries made before it); 'refine': whether refine_quad snapped
  the quad to the edges (after one pass only, see rectifier); 'shape_prior': the weight with
  which the corners were chosen together among their heatmaps' peaks (inference/corner_peaks.py;
  no key: each map's highest peak, as registries made before it)."""
  record = {'detector': detector.fingerprint, 'min_confidence': float(min_confidence),
            'refine': not zoom}
  if zoom:
    record['zoom'] = float(zoom)
  if shape_prior:
    record['shape_prior'] = float(shape_prior)
  return dict(record, warp='direct') if square else record


def rectifier(detector, min_confidence=DEFAULT_MIN_CONFIDENCE, square=None,
              zoom=DEFAULT_ZOOM, shape_prior=DEFAULT_SHAPE_PRIOR):
  """rgb -> (image to embed, info): detect (with the zoomed second pass when zoom > 0), warp
  (to [square, square] when given, see rectify); the whole photo, and the reason, when the
  detector is unsure or its quad degenerate. With one pass (zoom 0) the quad is first snapped
  to the edges (refine_quad): that lifted MIDV's IoU >= 0.9 from 54% to 67% after one pass,
  but after the zoomed pass it gained nothing on rendered held-out photos and cost real ones
  (benchmarks/corners_zoom.py --refine, benchmarks/corners_midv.py), and it takes ~8 ms.
  shape_prior: inference/detector.py detect's. For inference.images.load_images(transform=...)."""
  def transform(rgb):
    found = detector.detect(rgb, zoom=zoom, min_confidence=min_confidence,
                            shape_prior=shape_prior)
    if not zoom and found['confidence'] >= min_confidence:
      found = dict(found, quad=refine_quad(rgb, found['quad']))
    return rectify_or_whole(rgb, found, min_confidence, square)
  return transform


def flat_page(rgb):
  """The transform for an image that is already a flat page (a scan, a PDF render, a clean
  template: `register --flat`, `evaluate --flat-register`): embedded whole, which is what
  rectification would make of it with a perfect outline (the quad of the whole image)."""
  h, w = rgb.shape[:2]
  return rgb, {'rectified': False, 'flat': True,
               'quad': quads.frame_quad(w, h).tolist(),
               'confidence': None, 'reason': 'given as a flat page: embedded whole'}
