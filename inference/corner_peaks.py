"""Choosing each corner among its heatmap's peaks so that the four make a page's outline (issue 15).

The detector (models/corners.py) gives one heatmap per corner; inference took each map's highest
peak on its own. On real phone frames the typical failure is one corner on the wrong peak: three
corners on the card and the fourth on a keyboard key's corner, with the card's true corner the
map's second peak. Four points on a flat page seen by a phone are close to a parallelogram (exact
under an affine camera; perspective bends it a little), so a corner that jumped shows as the
parallelogram residual |p0 - p1 + p2 - p3|: the same for all four corners, but which corner to
move is told by the heatmaps.

`peaks(heatmaps, k)` finds each map's k highest local maxima, each located by the soft-argmax in
the (2 radius + 1)^2 window around it (the first is exactly what models/corners.py
`peak_soft_argmax` gives) and scored by the log of the probability mass in that window;
`consistent_quad(...)` picks the one of the k^4 combinations that maximises the summed log-masses
minus `weight` x the residual over the mean diagonal, among convex clockwise quads. numpy only
(an ONNX-served detector uses it too); ~0.2 ms for k=2.
"""
import numpy as np

RADIUS = 2  # models/corners.py peak_soft_argmax's window
DEFAULT_PEAKS = 2


def peaks(heatmaps, k=DEFAULT_PEAKS, radius=RADIUS):
  """heatmaps [H, W, 4] logits -> (xy [4, k, 2] in [0, 1] image coordinates, log-mass [4, k]).
  A map with fewer than k peaks repeats its last one (-inf log-mass: never chosen over a real
  one). All four maps at once: this runs twice per photo on the serving path."""
  m = np.asarray(heatmaps, np.float64).transpose(2, 0, 1)          # [4, H, W]
  n, h, w = m.shape
  top = m.max(axis=(1, 2), keepdims=True)
  logp = m - top - np.log(np.exp(m - top).sum(axis=(1, 2), keepdims=True))
  padded = np.pad(m, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  near = np.stack([padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])   # [8, 4, H, W]
  lowest = np.where(np.isfinite(near), near, np.inf).min(0)
  # A peak is no lower than its 8 neighbours and higher than one of them: a flat stretch of
  # map is not a peak. The global argmax first (the first index on ties, as jnp.argmax).
  flat = m.reshape(n, -1)
  score = np.where(((m >= near.max(0)) & (m > lowest)).reshape(n, -1), flat, -np.inf)
  first = np.argmax(flat, axis=1)
  score[np.arange(n), first] = np.inf
  order = np.argsort(-score, axis=1, kind='stable')[:, :k]                    # [4, k]
  real = np.isfinite(np.take_along_axis(score, order, 1)) | (np.arange(k) == 0)
  # Each peak located by the soft-argmax over its (2 radius + 1)^2 window (cut at the edges).
  pi, pj = np.divmod(order, w)
  offsets = np.arange(-radius, radius + 1)
  rows, cols = pi[..., None] + offsets, pj[..., None] + offsets                # [4, k, 2r+1]
  inside = ((rows >= 0) & (rows < h))[..., :, None] & ((cols >= 0) & (cols < w))[..., None, :]
  c = np.arange(n)[:, None, None, None]
  win = np.where(inside, m[c, np.clip(rows, 0, h - 1)[..., :, None],
                           np.clip(cols, 0, w - 1)[..., None, :]], -np.inf)    # [4, k, 2r+1, 2r+1]
  p = np.exp(win - win.max(axis=(2, 3), keepdims=True))
  p /= p.sum(axis=(2, 3), keepdims=True)
  xy = np.stack([(p.sum(2) * (cols + 0.5) / w).sum(-1), (p.sum(3) * (rows + 0.5) / h).sum(-1)], -1)
  lp = np.where(inside, logp[c, np.clip(rows, 0, h - 1)[..., :, None],
                             np.clip(cols, 0, w - 1)[..., None, :]], -np.inf)
  mass = np.log(np.exp(lp).sum(axis=(2, 3)))
  # Fewer than k peaks: repeat the last real one, never chosen.
  last = np.maximum.accumulate(np.where(real, np.arange(k), 0), axis=1)
  xy = np.take_along_axis(xy, last[..., None], 1)
  return xy, np.where(real, mass, -np.inf)


def consistent_quad(xy, mass, size, weight):
  """(xy [4, k, 2] in [0, 1], log-mass [4, k]) of a `size` = (width, height) px image -> the
  chosen quad [4, 2] in its pixels: max of sum(log-mass) - weight * |p0 - p1 + p2 - p3| / mean
  diagonal over the convex clockwise combinations; the first peaks when none is (or weight 0)."""
  xy = np.asarray(xy, np.float64) * np.asarray(size, np.float64)
  n, k = mass.shape
  first = xy[:, 0]
  if not weight or k == 1:
    return first
  idx = np.stack(np.meshgrid(*[np.arange(k)] * n, indexing='ij'), -1).reshape(-1, n)  # [k^4, 4]
  q = xy[np.arange(n), idx]                                                        # [k^4, 4, 2]
  score = mass[np.arange(n), idx].sum(1)
  diag = 0.5 * (np.linalg.norm(q[:, 0] - q[:, 2], axis=-1) + np.linalg.norm(q[:, 1] - q[:, 3], axis=-1))
  resid = np.linalg.norm(q[:, 0] - q[:, 1] + q[:, 2] - q[:, 3], axis=-1) / np.maximum(diag, 1e-9)
  edges = np.roll(q, -1, axis=1) - q
  turns = edges[:, :, 0] * np.roll(edges, -1, axis=1)[:, :, 1] - \
      edges[:, :, 1] * np.roll(edges, -1, axis=1)[:, :, 0]
  # Clockwise on screen (y down) turns the same way at every corner: a convex outline.
  ok = np.all(turns > 0, axis=1) & (diag > 1e-9) & np.isfinite(score)
  if not ok.any():
    return first
  total = np.where(ok, score - weight * resid, -np.inf)
  return q[int(np.argmax(total))]
