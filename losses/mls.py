"""Mutual likelihood score (PFE, Shi and Jain 2019) and its loss over same-class pairs.

MLS(i, j) = -1/2 sum_d [ (mu_i - mu_j)^2 / (s_i + s_j) + log(s_i + s_j) ]  (s = sigma^2; the
constant -D/2 log 2pi is left out): the log-likelihood that two captures share one latent
code. The loss is the mean of -MLS over the batch's same-class pairs, with mu fixed.
"""
import jax.numpy as jnp


def mls(mu_a, log_var_a, mu_b, log_var_b):
  """Elementwise over rows: [.., D] x 4 -> [..]."""
  s = jnp.exp(log_var_a) + jnp.exp(log_var_b)
  return -0.5 * jnp.sum(jnp.square(mu_a - mu_b) / s + jnp.log(s), axis=-1)


def mls_matrix(mu, log_var):
  """All pairs of one batch: [B, D] x 2 -> [B, B]."""
  return mls(mu[:, None], log_var[:, None], mu[None], log_var[None])


def mls_loss(mu, log_var, labels):
  """-mean MLS over pairs i != j with the same label (0 if the batch has none)."""
  same = (labels[:, None] == labels[None, :]) & ~jnp.eye(len(labels), dtype=bool)
  scores = mls_matrix(mu, log_var)
  n = jnp.maximum(same.sum(), 1)
  return -jnp.sum(jnp.where(same, scores, 0.0)) / n, same.sum()
