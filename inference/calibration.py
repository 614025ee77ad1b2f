"""Score threshold for a target false-positive rate, from labelled images.

Protocol (the same as the evaluation README's pair TPR@FPR): every pair of images whose *types*
differ is an impostor pair (a sub-label 'A/glare' against 'A' is not a false accept); the
threshold is the lowest score that lets at most target_fpr of the impostor pairs through. The
pairs are all pairs among the calibration images and the registry's entries, pooled, so even a
one-image-per-type registry yields enough pairs. With n impostor pairs the rate cannot be
resolved below 1/n: then the threshold is the highest impostor score and the result says so.
numpy only.
"""
import numpy as np

DEFAULT_TARGET_FPR = 1e-4


def top_impostor_scores(embeddings, types, hashes, keep, block=1024):
  """The `keep` highest scores over pairs i<j with different types and different pixels.

  Returns (scores sorted descending, number of impostor pairs, number of genuine pairs, genuine
  scores). Memory stays O(block x N).
  """
  emb = np.asarray(embeddings, np.float32)
  types = np.asarray(types, dtype=object)
  _, type_ids = np.unique(types, return_inverse=True)
  _, hash_ids = np.unique(np.asarray(hashes, dtype=object), return_inverse=True)
  blank = np.asarray([not h for h in hashes])
  n = len(emb)
  top = np.zeros((0,), np.float32)
  n_impostor = 0
  genuine = []
  for start in range(0, n, block):
    rows = slice(start, min(n, start + block))
    s = emb[rows] @ emb.T
    i = np.arange(rows.start, rows.stop)[:, None]
    j = np.arange(n)[None, :]
    upper = j > i
    same_pixels = (hash_ids[rows][:, None] == hash_ids[None, :]) & ~blank[rows][:, None]
    same_type = type_ids[rows][:, None] == type_ids[None, :]
    impostor = upper & ~same_type & ~same_pixels
    n_impostor += int(impostor.sum())
    genuine.append(s[upper & same_type & ~same_pixels])
    cand = s[impostor]
    if keep > 0 and len(cand):
      cand = np.concatenate([top, cand])
      if len(cand) > keep:
        cand = cand[np.argpartition(-cand, keep - 1)[:keep]]
      top = cand
  genuine = np.concatenate(genuine) if genuine else np.zeros((0,), np.float32)
  return np.sort(top)[::-1], n_impostor, genuine


def calibrate_threshold(embeddings, types, hashes=None, target_fpr=DEFAULT_TARGET_FPR):
  """-> dict(threshold, target_fpr, impostor_pairs, accepted_impostors, achieved_fpr,
  genuine_pairs, genuine_accept_rate, resolution_limited)."""
  if not 0 < target_fpr < 1:
    raise ValueError(f'target FPR must be in (0, 1), got {target_fpr}')
  hashes = list(hashes) if hashes is not None else [''] * len(types)
  if len(set(types)) < 2:
    raise ValueError('calibration needs images of at least two types (no impostor pairs)')
  # Count first (cheap upper bound), then keep only as many top scores as can pass + 1.
  n_pairs_bound = len(types) * (len(types) - 1) // 2
  keep = int(np.floor(target_fpr * n_pairs_bound)) + 1
  top, n_impostor, genuine = top_impostor_scores(embeddings, types, hashes, keep)
  if n_impostor == 0:
    raise ValueError('calibration found no impostor pairs (all images identical?)')
  allowed = int(np.floor(target_fpr * n_impostor))  # impostor pairs that may pass
  # Accept score > threshold (strictly), the rule of evaluation/verification.threshold_at_fpr:
  # the threshold is the (allowed+1)-th highest impostor score.
  threshold = float(top[allowed])
  accepted = int((top > threshold).sum())
  return {
      'threshold': threshold, 'target_fpr': float(target_fpr),
      'impostor_pairs': n_impostor, 'accepted_impostors': accepted,
      'achieved_fpr': accepted / n_impostor,
      'genuine_pairs': int(len(genuine)),
      'genuine_accept_rate': float((genuine > threshold).mean()) if len(genuine) else None,
      'resolution_limited': bool(target_fpr * n_impostor < 1),
  }


def calibrate_registry(registry, embeddings, labels, hashes=None, target_fpr=DEFAULT_TARGET_FPR):
  """Pools the labelled calibration embeddings with the registry's entries, sets
  registry.threshold / registry.calibration, and returns the calibration dict."""
  types = [label.split('/', 1)[0] for label in list(labels) + registry.labels]
  hashes = (list(hashes) if hashes is not None else [''] * len(labels)) + registry.hashes
  emb = np.concatenate([np.asarray(embeddings, np.float32).reshape(-1, registry.embed_dim),
                        registry.embeddings])
  emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
  result = calibrate_threshold(emb, types, hashes, target_fpr)
  result['calibration_images'] = len(labels)
  registry.threshold = result['threshold']
  registry.calibration = result
  return result
