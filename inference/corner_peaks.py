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
  A map with fewer than k local maxima repeats its last one (-inf log-mass: never chosen over
  a real one)."""
  hm = np.asarray(heatmaps, np.float64)
  h, w, n = hm.shape
  ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
  xy = np.zeros((n, k, 2))
  mass = np.full((n, k), -np.inf)
  for c in range(n):
    m = hm[..., c]
    logp = m - m.max()
    logp = logp - np.log(np.exp(logp).sum())
    padded = np.pad(m, 1, constant_values=-np.inf)
    near = np.stack([padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    lowest = np.min(np.where(np.isfinite(near), near, np.inf), axis=0)
    # A peak is no lower than its 8 neighbours and higher than one of them: a flat stretch of
    # map is not a peak.
    flat = np.flatnonzero(((m >= near.max(0)) & (m > lowest)).ravel())
    # The global argmax first (np.argmax's first index on ties, as jnp.argmax in the model).
    order = flat[np.argsort(-m.ravel()[flat], kind='stable')]
    top = np.argmax(m.ravel())
    order = np.concatenate([[top], order[order != top]])[:k]
    for j in range(k):
      i0, j0 = divmod(int(order[min(j, len(order) - 1)]), w)
      r0, r1, c0, c1 = max(i0 - radius, 0), min(i0 + radius + 1, h), max(j0 - radius, 0), \
          min(j0 + radius + 1, w)
      win = m[r0:r1, c0:c1]
      p = np.exp(win - win.max())
      p /= p.sum()
      xy[c, j] = (p.sum(0) @ xs[c0:c1], p.sum(1) @ ys[r0:r1])
      if j < len(order):
        mass[c, j] = np.log(np.exp(logp[r0:r1, c0:c1]).sum())
  return xy, mass


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
