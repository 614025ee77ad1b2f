"""ResNet v1.5 (18/34/50/101) in NHWC, as in the flax imagenet example, returning the last feature map."""
import functools

import flax.linen as nn
import jax.numpy as jnp

STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class BasicBlock(nn.Module):
  features: int
  strides: int
  norm: callable
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    y = nn.relu(self.norm()(conv(self.features, (3, 3), self.strides)(x)))
    y = self.norm(scale_init=nn.initializers.zeros)(conv(self.features, (3, 3))(y))
    if x.shape != y.shape:
      x = self.norm()(conv(self.features, (1, 1), self.strides, name='proj')(x))
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  features: int
  strides: int
  norm: callable
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    y = nn.relu(self.norm()(conv(self.features, (1, 1))(x)))
    y = nn.relu(self.norm()(conv(self.features, (3, 3), self.strides)(y)))
    y = self.norm(scale_init=nn.initializers.zeros)(conv(self.features * 4, (1, 1))(y))
    if x.shape != y.shape:
      x = self.norm()(conv(self.features * 4, (1, 1), self.strides, name='proj')(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  depth: int = 18
  width: int = 64
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    if self.depth not in STAGES:
      raise ValueError(f'config.model.resnet_depth: {self.depth} not in {sorted(STAGES)}')
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    block = BasicBlock if self.depth < 50 else Bottleneck
    x = nn.Conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                dtype=self.dtype, name='stem')(x)
    x = nn.relu(norm(name='stem_bn')(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding='SAME')
    for i, n in enumerate(STAGES[self.depth]):
      for j in range(n):
        x = block(self.width * 2**i, 2 if (i > 0 and j == 0) else 1, norm, self.dtype)(x)
    return x
