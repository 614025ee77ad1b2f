"""Embedding heads: feature map -> embedding.

The seed's best design ('ln_bn'): 1x1 squeeze conv, flatten (keeps layout, which matters for
documents, unlike global pooling), then twice Linear -> LayerNorm -> BatchNorm. 'ln' and 'bn'
keep only one of the two norms, for ablations.

'grid_pca' (issue 12) keeps the backbone as ImageNet trained it and reads its last feature map
by regions: `grid` x `grid` overlapping windows (about half a window apart), each mean-pooled,
concatenated (a coarse layout, which forms need, but blind to a few pixels of shift), then one
Linear layer: a PCA whitening fitted on rendered paperwork captures (tools/fit_whitening.py), so
that the direction every white page shares stops dominating the cosine score. With `power` < 1
each pooled number first goes to sign(x) |x|^power (power normalisation, as in Fisher-vector and
R-MAC retrieval): a few strong activations (a large logo, a thick table rule) weigh less beside
the many weak ones of the text and boxes that tell two forms of one issuer apart.
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from errors import ConfigError
from models.layers import Conv

HEADS = ('ln_bn', 'ln', 'bn', 'grid_pca')


def _windows(n, grid):
  """`grid` windows over n cells, each ceil(2n / (grid + 1)) wide, evenly spaced."""
  width = min(n, -(-2 * n // (grid + 1)))
  starts = np.linspace(0, n - width, grid).round().astype(int)
  return [(int(a), int(a) + width) for a in starts]


def region_pool(x, grid):
  """[B, H, W, C] -> [B, grid * grid * C]: the mean of each window, row by row."""
  return jnp.concatenate([x[:, a:b, c:d].mean(axis=(1, 2)) for a, b in _windows(x.shape[1], grid)
                          for c, d in _windows(x.shape[2], grid)], axis=-1)


class EmbeddingHead(nn.Module):
  kind: str = 'ln_bn'
  squeeze_channels: int = 64
  embed_dim: int = 256
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = 'auto'
  grid: int = 2  # 'grid_pca' only
  tap_grid: int = 4  # 'grid_pca' with side taps: the windows over each side tap's map
  power: float = 1.0  # 'grid_pca': signed power of the pooled vector before the whitening

  @nn.compact
  def __call__(self, x, train=False, taps=()):
    if self.kind not in HEADS:
      raise ValueError(f'config.model.head: unknown head {self.kind!r} ({" | ".join(HEADS)})')
    if self.kind == 'grid_pca':
      x = jnp.concatenate([region_pool(x.astype(jnp.float32), self.grid)] + [
          region_pool(t.astype(jnp.float32), self.tap_grid) for t in taps], axis=-1)
      if self.power != 1.0:  # power normalisation: the module docstring says why
        x = jnp.sign(x) * jnp.abs(x) ** self.power
      self.sow('intermediates', 'squeezed', x)  # the uncertainty head's input, as below
      return nn.Dense(self.embed_dim, name='whiten')(x)
    if taps:
      raise ConfigError(f'config.model.tap_blocks: side taps are read by the grid_pca head only, '
                        f'not {self.kind!r}')
    x = Conv(self.squeeze_channels, use_bias=False, dtype=self.dtype, impl=self.conv_impl,
             name='squeeze')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                     name='squeeze_bn')(x)
    x = nn.hard_swish(x)
    # The squeezed map, for the uncertainty head (models/uncertainty.py): a no-op unless
    # applied with mutable=['intermediates'].
    self.sow('intermediates', 'squeezed', x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i in range(2):
      x = nn.Dense(self.embed_dim, dtype=self.dtype, name=f'fc{i}')(x)
      if 'ln' in self.kind:
        x = nn.LayerNorm(dtype=self.dtype, name=f'ln{i}')(x)
      if 'bn' in self.kind:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                         name=f'bn{i}')(x)
    return x.astype(jnp.float32)
