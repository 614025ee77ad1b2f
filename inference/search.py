"""Nearest registered entries by cosine score: one matrix product, or a faiss index.

Rows are L2-normalised, so cosine = inner product. Scores returned are exact float32: a
registry's threshold was calibrated on exact scores. For big registries and single queries faiss
wins on CPU (benchmarks/registry_search.py, 1M x 256, one core: numpy ~106 ms CPU per query,
faiss flat ~62 ms, faiss fp16 ~30 ms). 'faiss_fp16' stores entries in half precision (half the
bytes to read); its candidates are re-scored exactly in float32, and it searches at least
RESCORE_CANDIDATES of them, so only a near-tie at the fp16 resolution (~1e-3) could reorder.
Batches of queries go through the matrix product (BLAS gemm beats faiss there).
faiss is optional: 'auto' falls back to numpy without it.
"""
import numpy as np

BACKENDS = ('auto', 'numpy', 'faiss', 'faiss_fp16')
# Below this many entries numpy's product is as fast and needs no index build.
FAISS_MIN_ENTRIES = 20_000
# From this many queries per call the matrix product (gemm) is faster than faiss.
MATMUL_MIN_QUERIES = 16
RESCORE_CANDIDATES = 32


def l2_normalize(x):
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def have_faiss():
  try:
    import faiss  # noqa: F401
    return True
  except ImportError:
    return False


class EntryIndex:
  """Exact top-k inner-product search over a fixed [N, D] matrix of normalised rows."""

  def __init__(self, entries, backend='auto'):
    if backend not in BACKENDS:
      raise ValueError(f'search backend {backend!r}: one of {BACKENDS}')
    self.entries = np.ascontiguousarray(entries, np.float32)
    if backend == 'auto':
      big = len(self.entries) >= FAISS_MIN_ENTRIES
      backend = 'faiss_fp16' if big and have_faiss() else 'numpy'
    self.backend = backend
    self._faiss = None
    if backend.startswith('faiss'):
      import faiss
      d = self.entries.shape[1]
      kind = 'SQfp16' if backend == 'faiss_fp16' else 'Flat'
      self._faiss = faiss.index_factory(d, kind, faiss.METRIC_INNER_PRODUCT)
      if not self._faiss.is_trained:
        self._faiss.train(self.entries[:1])  # fp16 quantiser has nothing to learn
      self._faiss.add(self.entries)

  def __len__(self):
    return len(self.entries)

  def search(self, queries, k, mask=None):
    """queries [Q, D] -> (scores [Q, k], indices [Q, k]), best first; -1 index = no entry.

    mask: optional bool [N]; entries where it is False are never returned (used to restrict a
    query to one type's sub-labels). Masked searches use the matrix product.
    """
    queries = np.ascontiguousarray(queries, np.float32)
    n = len(self.entries)
    k_eff = min(k, n if mask is None else int(mask.sum()))
    scores = np.full((len(queries), k), -np.inf, np.float32)
    indices = np.full((len(queries), k), -1, np.int64)
    if k_eff <= 0:
      return scores, indices
    if self._faiss is not None and mask is None and len(queries) < MATMUL_MIN_QUERIES:
      if self.backend == 'faiss_fp16':
        _, cand = self._faiss.search(queries, min(n, max(k_eff, RESCORE_CANDIDATES)))
        exact = np.einsum('qd,qkd->qk', queries, self.entries[np.maximum(cand, 0)])
        exact = np.where(cand >= 0, exact, -np.inf)
        order = np.argsort(-exact, axis=1, kind='stable')[:, :k_eff]
        s, i = np.take_along_axis(exact, order, 1), np.take_along_axis(cand, order, 1)
      else:
        s, i = self._faiss.search(queries, k_eff)
      scores[:, :k_eff], indices[:, :k_eff] = s, i
      return scores, indices
    s, i = top_k_matmul(queries, self.entries, k_eff, mask)
    scores[:, :k_eff], indices[:, :k_eff] = s, i
    return scores, indices


def top_k_matmul(queries, entries, k, mask=None, chunk=65536):
  """Exact top-k by blocks of entries, so Q x N scores never sit in memory at once."""
  best_s = np.full((len(queries), 0), -np.inf, np.float32)
  best_i = np.zeros((len(queries), 0), np.int64)
  for start in range(0, len(entries), chunk):
    s = queries @ entries[start:start + chunk].T
    if mask is not None:
      s = np.where(mask[start:start + chunk][None], s, -np.inf)
    kk = min(k, s.shape[1])
    part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
    best_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
    best_i = np.concatenate([best_i, part + start], axis=1)
    if best_s.shape[1] > k:
      keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
      best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
  order = np.argsort(-best_s, axis=1, kind='stable')
  return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
