"""Embedding heads: feature map -> embedding.

The seed's best design ('ln_bn'): 1x1 squeeze conv, flatten (keeps layout, which matters for
documents, unlike global pooling), then twice Linear -> LayerNorm -> BatchNorm. 'ln' and 'bn'
keep only one of the two norms, for ablations.
"""
import flax.linen as nn
import jax.numpy as jnp

from models.layers import Conv

HEADS = ('ln_bn', 'ln', 'bn')


class EmbeddingHead(nn.Module):
  kind: str = 'ln_bn'
  squeeze_channels: int = 64
  embed_dim: int = 256
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train=False):
    if self.kind not in HEADS:
      raise ValueError(f'config.model.head: unknown head {self.kind!r} ({" | ".join(HEADS)})')
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
