import numpy as np
import pytest

from evaluation import verification


def test_tpr_at_fpr_counts_negatives_strictly_above_threshold():
  # 1-d embeddings on the unit circle give known cosines.
  angles = np.array([0.0, 0.1, 2.0, 2.05, 4.0])
  emb = np.stack([np.cos(angles), np.sin(angles)], 1)
  labels = np.array([0, 0, 1, 1, 2])
  m = verification.pair_metrics(emb, labels, fprs=(1e-4, 0.5))
  assert m['pairs_positive'] == 2 and m['pairs_negative'] == 8
  assert m['tpr@fpr=1e-04'] == 1.0  # both positives (cos ~0.995, 0.999) beat every negative
  assert m['auroc'] == 1.0
  assert not m['resolvable@fpr=1e-04'] and m['resolvable@fpr=5e-01']


def test_auroc_matches_brute_force_with_ties():
  rng = np.random.default_rng(1)
  pos = rng.integers(0, 5, 50).astype(float)
  neg = rng.integers(0, 5, 70).astype(float)
  brute = np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None]))
  assert verification.auroc(pos, neg) == pytest.approx(brute)


def test_threshold_lets_at_most_the_allowed_share_through():
  rng = np.random.default_rng(2)
  neg = rng.normal(size=10_000)
  for fpr in (1e-3, 1e-2, 0.1):
    t = verification.threshold_at_fpr(neg, fpr)
    assert np.mean(neg > t) <= fpr
    assert np.mean(neg >= t) > fpr  # and no higher threshold would do


def test_top1_identification():
  emb = np.array([[1, 0], [0, 1], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
  labels = np.array(['a', 'b', 'a', 'b', 'b'])
  reg = np.array([True, True, False, False, False])
  assert verification.top1_identification(emb, labels, reg) == pytest.approx(2 / 3)
