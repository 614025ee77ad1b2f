import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from losses import margin


def loss_config(kind, **kw):
  c = ml_collections.ConfigDict(dict(margin=kind, scale=64.0, m1=1.0, m2=0.5, m3=0.4,
                                     interclass_filtering_threshold=0.0))
  c.update(kw)
  return c


def test_cosface_subtracts_margin_from_target_only():
  cos = jnp.array([[0.5, 0.2, -0.1]])
  mask = jnp.array([[True, False, False]])
  out = margin.margin_logits(cos, mask, loss_config('cosface'))
  np.testing.assert_allclose(out, 64.0 * np.array([[0.1, 0.2, -0.1]]), rtol=1e-6)


def test_arcface_adds_angle_and_stays_monotone_past_pi():
  cfg = loss_config('arcface', m2=0.5)
  thetas = np.linspace(0.01, math.pi - 0.01, 200)
  cos = jnp.asarray(np.cos(thetas))[None]
  out = np.asarray(margin.margin_logits(cos, jnp.ones_like(cos, bool), cfg))[0] / 64.0
  small = thetas < math.pi - 0.5
  np.testing.assert_allclose(out[small], np.cos(thetas[small] + 0.5), atol=1e-5)
  assert np.all(np.diff(out) < 0), 'target logit must fall as the angle grows'


def test_combined_form_matches_formula():
  cfg = loss_config('combined', m1=1.0, m2=0.3, m3=0.2)
  cos = jnp.array([[0.7]])
  out = float(margin.margin_logits(cos, jnp.array([[True]]), cfg)[0, 0]) / 64.0
  assert out == pytest.approx(math.cos(math.acos(0.7) + 0.3) - 0.2, abs=1e-5)


def test_dense_loss_is_cross_entropy_of_margin_logits_and_ignores_padding():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(4, 8)).astype(np.float32)
  centers = rng.normal(size=(6, 8)).astype(np.float32)
  labels = np.array([0, 1, 2, 3])
  cfg = loss_config('cosface', scale=10.0)
  loss, _ = margin.dense_margin_loss(jnp.asarray(emb), jnp.asarray(labels), jnp.asarray(centers),
                                     cfg, num_valid_classes=4)
  e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  w = centers[:4] / np.linalg.norm(centers[:4], axis=1, keepdims=True)
  logits = 10.0 * (e @ w.T)
  logits[np.arange(4), labels] -= 10.0 * 0.4
  expected = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(4), labels])
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_interclass_filtering_zeroes_near_duplicate_negatives():
  cos = jnp.array([[0.3, 0.95, 0.1]])
  mask = jnp.array([[True, False, False]])
  out = margin.margin_logits(cos, mask, loss_config('cosface', interclass_filtering_threshold=0.9))
  assert float(out[0, 1]) == 0.0 and float(out[0, 2]) == pytest.approx(6.4)


def test_gradients_are_finite_at_cos_one():
  cfg = loss_config('arcface')
  f = lambda c: jnp.sum(margin.margin_logits(c, jnp.ones_like(c, bool), cfg))
  g = jax.grad(f)(jnp.array([[1.0, -1.0]]))
  assert np.all(np.isfinite(g))
