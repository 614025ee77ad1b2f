"""Uncertainty head (Probabilistic Face Embeddings, Shi and Jain, ICCV 2019), issue 14.

The trained embedder stays as it is (it gives the mean mu); this small head reads the embedder's
squeezed feature map (models/heads.py sows it) and predicts a per-dimension log-variance
log sigma^2 of mu. A capture the model cannot judge (glare, blur, a thumb over the header, half
the page cut off) gets a large sigma^2: it is far from its class mates in ways the head learns to
see. Two captures compare by the mutual likelihood score (losses/mls.py); `capture_uncertainty`
summarises a capture as the mean log-variance over dimensions (PFE's harmonic-mean sigma^2, in
log space).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


class UncertaintyHead(nn.Module):
  """Squeezed map [B, h, w, c] -> log sigma^2 [B, embed_dim] (PFE: fc-BN-relu-fc-BN, then an
  affine in log space, so the initial variances start near exp(init_log_var))."""
  embed_dim: int = 256
  hidden: int = 256
  init_log_var: float = -6.0

  @nn.compact
  def __call__(self, squeezed, train=False):
    x = squeezed.astype(jnp.float32).reshape(squeezed.shape[0], -1)
    x = nn.Dense(self.hidden, name='fc0')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bn0')(x)
    x = nn.relu(x)
    x = nn.Dense(self.embed_dim, name='fc1')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, use_scale=False,
                     use_bias=False, name='bn1')(x)
    gamma = self.param('gamma', nn.initializers.constant(0.1), ())
    beta = self.param('beta', nn.initializers.constant(self.init_log_var), ())
    return gamma * x + beta


def embed_and_squeezed(embedder, variables, images):
  """The frozen embedder: (L2-normalised mu [B, D], squeezed map [B, h, w, c])."""
  e, state = embedder.apply(variables, images, train=False, mutable=['intermediates'])
  squeezed = state['intermediates']['head']['squeezed'][0]
  e = e.astype(jnp.float32)
  return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12), squeezed


def capture_uncertainty(log_var):
  return jnp.mean(log_var, axis=-1)


def make_embed_uncertain_fn(embedder, variables, head, head_variables):
  """uint8 images -> (mu [B, D], log sigma^2 [B, D]); everything closed over (exportable)."""
  def fn(images):
    mu, squeezed = embed_and_squeezed(embedder, variables, images)
    return mu, head.apply(head_variables, jax.lax.stop_gradient(squeezed), train=False)
  return fn
