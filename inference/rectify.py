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
from PIL import Image

from errors import InputError
from inference import quads

MAX_SIDE = 1024  # px, longest side of a rectified image (the embedder sees 224 or less)


def rectified_size(quad, max_side=MAX_SIDE):
  """(width, height) of the upright rectangle for `quad`: mean lengths of opposite sides, scaled
  down so that the longest side is at most max_side."""
  q = np.asarray(quad, np.float64)
  side = lambda i, j: np.linalg.norm(q[i] - q[j])
  w, h = 0.5 * (side(0, 1) + side(3, 2)), 0.5 * (side(0, 3) + side(1, 2))
  scale = min(1.0, max_side / max(w, h))
  return max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)


def rectify(rgb, quad, max_side=MAX_SIDE):
  """uint8 [H, W, 3] and a quad in its pixels -> uint8 [h, w, 3], the document upright."""
  height, width = rgb.shape[:2]
  problem = quads.quad_problem(quad, width, height)
  if problem:
    raise InputError(f'cannot rectify: the document outline is degenerate ({problem})')
  w, h = rectified_size(quad, max_side)
  rect = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
  # Pillow wants the map from output to input pixels (continuous coordinates, corner at 0).
  coeffs = quads.homography(rect, quad).flatten()[:8]
  out = Image.fromarray(rgb).transform((w, h), Image.Transform.PERSPECTIVE, tuple(coeffs),
                                       Image.BILINEAR)
  return np.asarray(out, np.uint8)


def rectify_or_whole(rgb, detection, min_confidence):
  """(image to embed, info). detection: {'quad': [4, 2] px, 'confidence': float in [0, 1]}.
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
  return rectify(rgb, quad), info
