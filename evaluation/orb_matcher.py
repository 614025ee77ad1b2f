"""A classical matcher, no learning: the bar a learned embedding must clear (benchmarks/real_baselines.py).

Each image: grayscale, resized to a fixed longest side, ORB keypoints and binary descriptors,
computed once. Each pair: brute-force Hamming k=2 matching with Lowe's ratio test, then a RANSAC
homography; the pair score is its number of inliers (two captures of one page share a plane, two
pages of different layouts do not). The score matrix goes through evaluation/verification.py's
`*_from_scores` like any embedding's cosines.

OpenCV is a benchmark/test-only dependency (requirements-dev.txt); only this module imports it.
"""
import multiprocessing
import time

import cv2
import numpy as np

RATIO = 0.75  # Lowe's ratio test, OpenCV's tutorial value
RANSAC_PX = 5.0  # reprojection threshold, pixels at the resized scale
# OpenCV's default 2000 iterations are spent in full on every pair of different pages (few
# inliers, so no early stop): 30 ms of a 40 ms pair at 1000 keypoints. 500 still find a page
# with a third of its matches inliers with probability 1 - (1 - 3**-4)**500 > 0.998.
RANSAC_ITERS = 500
MIN_MATCHES = 4  # a homography needs four correspondences


def gray_at_side(rgb, longest_side):
  """uint8 [H, W, 3] RGB -> uint8 grayscale with max(H, W) == longest_side (up or down)."""
  gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
  h, w = gray.shape
  scale = longest_side / max(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return cv2.resize(gray, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def orb_features(gray, n_features):
  """(points float32 [K, 2], descriptors uint8 [K, 32]); K may be 0 (a blank image)."""
  keypoints, descriptors = cv2.ORB_create(nfeatures=n_features).detectAndCompute(gray, None)
  if descriptors is None:
    return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
  return np.float32([k.pt for k in keypoints]), descriptors


def inlier_count(a, b, matcher=None):
  """Pair score of two orb_features: RANSAC-homography inliers among ratio-tested matches."""
  (pts_a, desc_a), (pts_b, desc_b) = a, b
  if len(desc_a) < MIN_MATCHES or len(desc_b) < 2:
    return 0
  matcher = matcher or cv2.BFMatcher(cv2.NORM_HAMMING)
  good = [m[0] for m in matcher.knnMatch(desc_a, desc_b, k=2)
          if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
  if len(good) < MIN_MATCHES:
    return 0
  src = pts_a[[m.queryIdx for m in good]]
  dst = pts_b[[m.trainIdx for m in good]]
  _, mask = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_PX, maxIters=RANSAC_ITERS)
  return 0 if mask is None else int(mask.sum())


_FEATURES = None  # the image features, in each process that scores rows


def _set_features(features):
  global _FEATURES
  _FEATURES = features
  cv2.setNumThreads(1)  # one process per core already


def _score_row_of(features, i):
  """Row i's scores against every later image, and the CPU seconds they took."""
  start = time.process_time()
  matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
  row = [inlier_count(features[i], features[j], matcher) for j in range(i + 1, len(features))]
  return i, np.asarray(row, np.int32), time.process_time() - start


def _score_row(i):
  return _score_row_of(_FEATURES, i)


def all_pair_inliers(features, workers=1):
  """Symmetric int32 [N, N] inlier counts over all i < j (diagonal 0), and the summed CPU seconds
  of the pair scoring (every worker's). Rows are spread over `workers` processes, spawned, not
  forked: a fork after OpenCV has started its thread pool deadlocks in the child."""
  n = len(features)
  scores = np.zeros((n, n), np.int32)
  cpu_s = 0.0
  features = list(features)
  if workers > 1:  # rows 0, 1, ... are longest first, so the workers finish together
    with multiprocessing.get_context('spawn').Pool(workers, _set_features, (features,)) as pool:
      rows = list(pool.imap_unordered(_score_row, range(n)))
  else:
    rows = [_score_row_of(features, i) for i in range(n)]
  for i, row, cpu in rows:
    scores[i, i + 1:] = row
    cpu_s += cpu
  return scores + scores.T, cpu_s
