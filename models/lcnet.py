"""PP-LCNet (Cui et al. 2021): depthwise-separable blocks, hard-swish, SE only in the last stage.

At scale 0.5 and 128 px this is the seed's best backbone (~0.05 GFLOPs with its head).
Returns the last feature map [B, H/32, W/32, C]; models/heads.py turns it into an embedding.
"""
import flax.linen as nn
import jax.numpy as jnp

from models.layers import Conv, DepthwiseConv, NativeBatchNorm, use_native_batch_norm

# (kernel, out_channels, stride, use_se) per depthwise-separable block, at scale 1.0.
LCNET_BLOCKS = (
    (3, 32, 1, False),
    (3, 64, 2, False), (3, 64, 1, False),
    (3, 128, 2, False), (3, 128, 1, False),
    (3, 256, 2, False), (5, 256, 1, False), (5, 256, 1, False), (5, 256, 1, False),
    (5, 256, 1, False), (5, 256, 1, False),
    (5, 512, 2, True), (5, 512, 1, True),
)


def make_divisible(v, divisor=8, min_value=None):
  min_value = min_value or divisor
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


class SqueezeExcite(nn.Module):
  reduction: int = 4
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(Conv(c // self.reduction, use_bias=True, dtype=self.dtype, impl=self.conv_impl,
                     name='Conv_0')(s))
    s = nn.hard_sigmoid(Conv(c, use_bias=True, dtype=self.dtype, impl=self.conv_impl,
                             name='Conv_1')(s))
    return x * s


class ConvBN(nn.Module):
  """Conv (or depthwise conv) -> BatchNorm -> hard-swish."""
  features: int
  kernel_size: int = 1
  strides: int = 1
  depthwise: bool = False
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = 'auto'
  depthwise_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train):
    if self.depthwise:
      x = DepthwiseConv(self.kernel_size, self.strides, dtype=self.dtype,
                        impl=self.depthwise_impl)(x)
    else:
      k = self.kernel_size
      x = Conv(self.features, k, self.strides, dtype=self.dtype, impl=self.conv_impl,
               name='Conv_0')(x)
    if use_native_batch_norm(self.conv_impl, self.dtype):
      x = NativeBatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          name='BatchNorm_0')(x)
    else:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       dtype=self.dtype, name='BatchNorm_0')(x)
    return nn.hard_swish(x)


class LCNet(nn.Module):
  scale: float = 0.5
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = 'auto'
  depthwise_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train=False):
    kw = dict(dtype=self.dtype, conv_impl=self.conv_impl)
    x = ConvBN(make_divisible(16 * self.scale), 3, 2, name='stem', **kw)(x, train)
    for i, (k, c, s, se) in enumerate(LCNET_BLOCKS):
      c = make_divisible(c * self.scale)
      x = ConvBN(x.shape[-1], k, s, depthwise=True, depthwise_impl=self.depthwise_impl,
                 name=f'block{i}_dw', **kw)(x, train)
      if se:
        x = SqueezeExcite(name=f'block{i}_se', **kw)(x)
      x = ConvBN(c, 1, 1, name=f'block{i}_pw', **kw)(x, train)
    return x
