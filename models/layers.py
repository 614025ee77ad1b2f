"""Layers shared by the backbones.

DepthwiseConv keeps nn.Conv's parameter layout (kernel [k, k, 1, C]) so checkpoints do not
depend on which implementation ran; `impl` picks how it is computed (see issue 7 notes).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


class DepthwiseConv(nn.Module):
  """k x k depthwise convolution, 'SAME' padding, no bias."""
  kernel_size: int = 3
  strides: int = 1
  dtype: jnp.dtype = jnp.float32
  impl: str = 'auto'  # auto | xla | shifted

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, k, 1, c))
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    return jax.lax.conv_general_dilated(
        x, kernel, (self.strides, self.strides), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)
