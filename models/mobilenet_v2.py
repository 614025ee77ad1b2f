"""MobileNetV2 (Sandler et al. 2018), laid out like torchvision's so ImageNet weights load 1:1.

Parameter names are torchvision's state-dict names with '.' -> '_' (`features_2_conv_1_0` is
torchvision's `features.2.conv.1.0`), so models/pretrained.py maps them with one rule.
Takes ImageNet-normalised NHWC input (models/embedder.py normalises) and returns the last feature
map [B, H/32, W/32, 1280 * width]; mean-pooling it gives torchvision's pooled features.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers import Conv, DepthwiseConv
from models.lcnet import make_divisible

# (expand_ratio, out_channels, repeats, first_stride), torchvision's inverted_residual_setting.
MOBILENET_V2_BLOCKS = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


def torch_padded_depthwise(conv, x, kernel_size, strides):
  """Runs a 'SAME'-padded DepthwiseConv with torch's symmetric padding (k-1)//2.

  The two differ only for stride 2 on an even size, where SAME pads (0, 1) and torch (1, 1):
  padding one more pixel on each side and dropping the extra last output gives torch's windows.
  Needed for the converted weights to reproduce torchvision's features exactly.
  """
  h, w = x.shape[1:3]
  if strides == 1 or (h % 2 and w % 2) or kernel_size != 3:
    return conv(x)
  p = (kernel_size - 1) // 2
  y = conv(jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))))
  return y[:, :-(-h // strides), :-(-w // strides)]


def conv_bn_relu6(x, train, conv_name, bn_name, features, kernel_size=1, strides=1, *,
                  depthwise=False, relu=True, dtype=jnp.float32, depthwise_impl='auto',
                  conv_impl='auto'):
  """torchvision's ConvBNActivation, called inside MobileNetV2's compact __call__.

  A function rather than a Module so parameters sit directly under torch's names (flat tree).
  """
  k, s = kernel_size, strides
  if depthwise:
    conv = DepthwiseConv(k, s, dtype=dtype, impl=depthwise_impl, name=conv_name)
    x = torch_padded_depthwise(conv, x, k, s)
  else:
    p = (k - 1) // 2
    x = Conv(features, k, s, padding=((p, p), (p, p)), dtype=dtype, impl=conv_impl,
             name=conv_name)(x)
  x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                   name=bn_name)(x)
  return nn.relu6(x) if relu else x


class MobileNetV2(nn.Module):
  width: float = 1.0
  dtype: jnp.dtype = jnp.float32
  depthwise_impl: str = 'auto'
  conv_impl: str = 'auto'
  # features_0 .. features_{frozen_features - 1} stay as loaded: batch norm in inference mode and
  # no gradient into them (fine-tuning keeps the ImageNet low-level features, and the backward
  # pass skips the high-resolution layers, which cost most on a CPU).
  frozen_features: int = 0
  # Feature taps (issue 15's corner detector): when set, returns [output of features_k for k in
  # feature_taps] and stops after the last one (blocks after it get no parameters).
  feature_taps: tuple = ()
  # Side taps (issue 12's released embedder): when set, runs the whole network and returns
  # (last feature map, [output of features_k for k in side_taps]): the grid_pca head also reads
  # the stride-16 map, whose finer cells see a form's boxes and lines.
  side_taps: tuple = ()

  @nn.compact
  def __call__(self, x, train=False):
    kw = dict(dtype=self.dtype, depthwise_impl=self.depthwise_impl, conv_impl=self.conv_impl)
    frozen = self.frozen_features
    taps = []
    x = conv_bn_relu6(x, train and frozen <= 0, 'features_0_0', 'features_0_1',
                      make_divisible(32 * self.width), 3, 2, **kw)
    i = 1
    for t, c, n, s in MOBILENET_V2_BLOCKS:
      c_out = make_divisible(c * self.width)
      for r in range(n):
        if i == frozen:
          x = jax.lax.stop_gradient(x)
        train_block = train and i >= frozen
        p, c_in = f'features_{i}_conv_', x.shape[-1]
        y, j = x, 0
        if t != 1:  # 1x1 expansion
          y = conv_bn_relu6(y, train_block, p + '0_0', p + '0_1', c_in * t, **kw)
          j = 1
        stride = s if r == 0 else 1
        y = conv_bn_relu6(y, train_block, f'{p}{j}_0', f'{p}{j}_1', y.shape[-1], 3, stride,
                          depthwise=True, **kw)
        y = conv_bn_relu6(y, train_block, f'{p}{j + 1}', f'{p}{j + 2}', c_out, relu=False, **kw)
        x = x + y if stride == 1 and c_in == c_out else y
        if i in self.feature_taps or i in self.side_taps:
          taps.append(x)
          if self.feature_taps and i == max(self.feature_taps):
            return taps
        i += 1
    last = make_divisible(1280 * max(1.0, self.width))
    if i <= frozen:
      x = jax.lax.stop_gradient(x)
    x = conv_bn_relu6(x, train and i >= frozen, f'features_{i}_0', f'features_{i}_1', last, **kw)
    return (x, taps) if self.side_taps else x
