"""Open-set figures: pair verification (TPR at a fixed FPR, AUROC) and top-1 identification.

Pairs: every unordered pair of distinct images, scored by cosine. For a target FPR f the
threshold is the lowest score that lets at most floor(f * n_negative_pairs) different-label pairs
through (strictly above it); TPR is the share of same-label pairs strictly above it.
The `*_from_scores` forms take any pair score matrix (higher = more alike), so a matcher that is
not an embedding (benchmarks/real_baselines.py: ORB inlier counts) is scored by the same protocol.
"""
import numpy as np

DEFAULT_FPRS = (1e-5, 1e-4, 1e-3, 1e-2)


def normalize(x):
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pair_scores(embeddings, labels):
  """(scores, same) over all i < j pairs."""
  e = normalize(embeddings)
  return pair_scores_from_matrix(e @ e.T, labels)


def pair_scores_from_matrix(score_matrix, labels):
  """(scores, same) over all i < j pairs of a symmetric [N, N] score matrix."""
  labels = np.asarray(labels)
  iu = np.triu_indices(len(labels), k=1)
  same = (labels[:, None] == labels[None, :])[iu]
  return np.asarray(score_matrix)[iu], same


def threshold_at_fpr(negative_scores, fpr):
  """Smallest threshold with at most floor(fpr * n) negatives strictly above it."""
  neg = np.sort(np.asarray(negative_scores))[::-1]
  allowed = int(np.floor(fpr * len(neg)))
  if allowed >= len(neg):
    return -np.inf
  return float(neg[allowed])


def auroc(pos, neg):
  """P(pos > neg) + 0.5 P(pos == neg), by sorting (no O(P*N) matrix)."""
  neg = np.sort(neg)
  below = np.searchsorted(neg, pos, side='left')
  below_or_equal = np.searchsorted(neg, pos, side='right')
  return float(np.mean((below + below_or_equal) / 2.0) / len(neg))


def pair_metrics(embeddings, labels, fprs=DEFAULT_FPRS):
  """Dict of 'tpr@fpr=1e-04' etc., 'auroc', pair counts.

  Where fpr * n_negative < 1 the threshold is the highest negative score (FPR 0): the set is too
  small to resolve that FPR, and 'resolvable@fpr=...' says so.
  """
  return pair_metrics_from_scores(*pair_scores(embeddings, labels), fprs=fprs)


def pair_metrics_from_scores(scores, same, fprs=DEFAULT_FPRS):
  """pair_metrics for given pair scores and same-label flags (e.g. pair_scores_from_matrix's)."""
  scores, same = np.asarray(scores), np.asarray(same, bool)
  pos, neg = scores[same], scores[~same]
  if len(pos) == 0 or len(neg) == 0:
    raise ValueError('pair metrics need at least two labels and one label with two images')
  out = {'pairs_positive': int(len(pos)), 'pairs_negative': int(len(neg)), 'auroc': auroc(pos, neg)}
  for f in fprs:
    t = threshold_at_fpr(neg, f)
    out[f'tpr@fpr={f:.0e}'] = float(np.mean(pos > t))
    out[f'threshold@fpr={f:.0e}'] = t
    out[f'resolvable@fpr={f:.0e}'] = bool(f * len(neg) >= 1)
  return out


def top1_identification(embeddings, labels, is_register):
  """Share of queries whose nearest registered image (cosine) has their label."""
  e = normalize(embeddings)
  is_register = np.asarray(is_register, bool)
  return top1_from_scores(e[~is_register] @ e[is_register].T, labels, is_register)


def top1_from_scores(query_gallery_scores, labels, is_register):
  """top1_identification for a [queries, registered] score matrix, rows and columns in the
  order of the queries and registered images among `labels`."""
  labels = np.asarray(labels)
  is_register = np.asarray(is_register, bool)
  scores = np.asarray(query_gallery_scores)
  if scores.shape != (int(np.sum(~is_register)), int(np.sum(is_register))):
    raise ValueError(f'top-1 scores of shape {scores.shape} for {np.sum(~is_register)} queries '
                     f'and {np.sum(is_register)} registered images')
  if scores.size == 0:
    raise ValueError('top-1 needs registered images and queries')
  nearest = np.argmax(scores, axis=1)
  return float(np.mean(labels[is_register][nearest] == labels[~is_register]))
