"""Document quadrilaterals (issue 15), numpy only: scores, validity, homographies.

A quad is float [4, 2] of (x, y) pixel corners, clockwise (in image coordinates, y down) from the
document's top-left. Used by the corner detector's evaluation (train_corners.py,
benchmarks/corners_midv.py) and by the rectifying warp (inference/rectify.py).
"""
import numpy as np


def frame_quad(width, height):
  """The quad of a whole width x height image, clockwise from the top-left, in pixels."""
  return np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)


def document_diagonal(quad):
  """Mean length of the quad's two diagonals."""
  q = np.asarray(quad, np.float64)
  return 0.5 * (np.linalg.norm(q[0] - q[2]) + np.linalg.norm(q[1] - q[3]))


def corner_error_pct(pred, true):
  """Mean distance of corresponding corners, in % of the true document's diagonal."""
  pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
  return float(100.0 * np.mean(np.linalg.norm(pred - true, axis=-1)) / document_diagonal(true))


def _inside(poly, xs, ys):
  """Even-odd rule: which points (xs, ys) lie inside the polygon [N, 2]."""
  inside = np.zeros(xs.shape, bool)
  n = len(poly)
  for i in range(n):
    (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % n]
    crosses = (y0 > ys) != (y1 > ys)
    with np.errstate(divide='ignore', invalid='ignore'):
      x_at = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
    inside ^= crosses & (xs < x_at)
  return inside


def quad_iou(a, b, resolution=512):
  """Intersection over union of two quads (any polygons), by sampling a resolution^2 grid over
  their joint bounding box (error well under 1% for quads that are not slivers)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  lo, hi = np.minimum(a.min(0), b.min(0)), np.maximum(a.max(0), b.max(0))
  if not np.all(np.isfinite(lo)) or not np.all(hi > lo):
    return 0.0
  t = (np.arange(resolution) + 0.5) / resolution
  ys, xs = np.meshgrid(lo[1] + t * (hi[1] - lo[1]), lo[0] + t * (hi[0] - lo[0]), indexing='ij')
  in_a, in_b = _inside(a, xs, ys), _inside(b, xs, ys)
  union = np.count_nonzero(in_a | in_b)
  return float(np.count_nonzero(in_a & in_b) / union) if union else 0.0


def signed_area(quad):
  """Shoelace area; positive for clockwise quads in image coordinates (y down)."""
  q = np.asarray(quad, np.float64)
  x, y = q[:, 0], q[:, 1]
  return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def quad_problem(quad, width, height, *, min_area_share=0.01, min_side_px=8.0,
                 max_angle_deg=165.0):
  """Why `quad` cannot be warped to a rectangle (a short phrase), or None if it can: not finite,
  not clockwise and convex, too small for the image, a side too short, or nearly a triangle."""
  q = np.asarray(quad, np.float64)
  if q.shape != (4, 2) or not np.all(np.isfinite(q)):
    return 'corners are not four finite points'
  edges = np.roll(q, -1, axis=0) - q
  crosses = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
  if not np.all(crosses > 0):
    return 'not a convex clockwise quadrilateral (self-intersecting, concave or mirrored)'
  if signed_area(q) < min_area_share * width * height:
    return f'area under {min_area_share:.0%} of the image'
  sides = np.linalg.norm(edges, axis=1)
  if sides.min() < min_side_px:
    return f'a side shorter than {min_side_px:g} px'
  prev = -np.roll(edges, 1, axis=0)
  cos = np.sum(prev * edges, axis=1) / (np.linalg.norm(prev, axis=1) * sides)
  if np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).max() > max_angle_deg:
    return f'a corner angle over {max_angle_deg:g} degrees (nearly a triangle)'
  return None


def homography(src, dst):
  """3x3 H with dst ~ H @ [src, 1] for four point pairs (direct linear transform)."""
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  rows, rhs = [], []
  for (x, y), (u, v) in zip(src, dst):
    rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
    rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    rhs.extend([u, v])
  h = np.linalg.solve(np.asarray(rows), np.asarray(rhs))
  return np.append(h, 1.0).reshape(3, 3)
