"""Uncertainty head (Probabilistic Face Embeddings, Shi and Jain, ICCV 2019), issue 14.

The trained embedder stays as it is (it gives the mean mu); this small head reads either the
embedder's squeezed feature map (models/heads.py sows it; 'squeezed', PFE's choice: the
bottleneck the embedding is made from) or the backbone's last feature map, mean- and max-pooled
('backbone_pooled': where blur, glare and an empty frame show, wherever they are), and predicts
a per-dimension log-variance
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
  features: str = 'squeezed'  # or 'backbone_pooled' (see module doc)

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


FEATURES = ('squeezed', 'backbone_pooled')


def embed_and_squeezed(embedder, variables, images, features='squeezed'):
  """The frozen embedder: (L2-normalised mu [B, D], the head's input features)."""
  if features not in FEATURES:
    raise ValueError(f'uncertainty features {features!r}: one of {FEATURES}')
  e, state = embedder.apply(variables, images, train=False, mutable=['intermediates'])
  if features == 'squeezed':
    x = state['intermediates']['head']['squeezed'][0]
  else:
    b = state['intermediates']['backbone'][0].astype(jnp.float32)
    x = jnp.concatenate([b.mean(axis=(1, 2)), b.max(axis=(1, 2))], axis=-1)
  e = e.astype(jnp.float32)
  return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12), x


def capture_uncertainty(log_var):
  return jnp.mean(log_var, axis=-1)


def make_embed_uncertain_fn(embedder, variables, head, head_variables):
  """uint8 images -> (mu [B, D], log sigma^2 [B, D]); everything closed over (exportable)."""
  def fn(images):
    mu, x = embed_and_squeezed(embedder, variables, images, head.features)
    return mu, head.apply(head_variables, jax.lax.stop_gradient(x), train=False)
  return fn
