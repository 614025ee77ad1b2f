"""PyTorch twin of the demo embedder and its training step, for benchmarks/train_step_speed.py.

Same layers and shapes as models/embedder.py with the LCNet backbone (the block table is imported
from models/lcnet.py, so the twin follows the real network), the same CosFace head
(losses/margin.py: normalised embeddings and centres, target cosine - m3, scale s, softmax
cross-entropy over every class) and the same optimizer (train.create_optimizer: global-norm
clipping, AdamW without decay on 1-d parameters). Only timing is compared: initialisation, the
learning-rate schedule and PyTorch's symmetric padding at stride 2 (one pixel shift vs 'SAME')
differ and cost the same.
"""
import torch
from torch import nn
import torch.nn.functional as F

from models.embedder import IMAGENET_MEAN, IMAGENET_STD
from models.lcnet import LCNET_BLOCKS, make_divisible


class ConvBN(nn.Sequential):
  """Conv (or depthwise conv) -> BatchNorm -> hard-swish, as models/lcnet.ConvBN."""

  def __init__(self, cin, cout, k, stride, depthwise=False):
    super().__init__(
        nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=cin if depthwise else 1,
                  bias=False),
        nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1),  # flax momentum 0.9 == torch 0.1
        nn.Hardswish())


class SqueezeExcite(nn.Module):
  def __init__(self, c, reduction=4):
    super().__init__()
    self.reduce = nn.Conv2d(c, c // reduction, 1)
    self.expand = nn.Conv2d(c // reduction, c, 1)

  def forward(self, x):
    s = x.mean((2, 3), keepdim=True)
    return x * F.hardsigmoid(self.expand(F.relu(self.reduce(s))))


class LCNet(nn.Module):
  def __init__(self, scale=0.5):
    super().__init__()
    c = make_divisible(16 * scale)
    layers = [ConvBN(3, c, 3, 2)]
    for k, cout, stride, se in LCNET_BLOCKS:
      cout = make_divisible(cout * scale)
      layers.append(ConvBN(c, c, k, stride, depthwise=True))
      if se:
        layers.append(SqueezeExcite(c))
      layers.append(ConvBN(c, cout, 1, 1))
      c = cout
    self.layers = nn.Sequential(*layers)
    self.out_channels = c

  def forward(self, x):
    return self.layers(x)


class Embedder(nn.Module):
  """uint8 NCHW images -> embeddings, with models/heads.py's 'ln_bn' head."""

  def __init__(self, scale=0.5, image_size=128, squeeze_channels=64, embed_dim=256):
    super().__init__()
    self.backbone = LCNet(scale)
    self.squeeze = ConvBN(self.backbone.out_channels, squeeze_channels, 1, 1)
    flat = squeeze_channels * (-(-image_size // 32)) ** 2
    self.fcs = nn.ModuleList(
        [nn.Linear(flat if i == 0 else embed_dim, embed_dim) for i in range(2)])
    self.lns = nn.ModuleList([nn.LayerNorm(embed_dim, eps=1e-6) for _ in range(2)])
    self.bns = nn.ModuleList([nn.BatchNorm1d(embed_dim, eps=1e-5, momentum=0.1)
                              for _ in range(2)])
    self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255)
    self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)

  def forward(self, images):
    x = (images.float() - self.mean) / self.std
    x = self.squeeze(self.backbone(x))
    x = x.permute(0, 2, 3, 1).flatten(1)  # flatten in NHWC order, as the flax head does
    for fc, ln, bn in zip(self.fcs, self.lns, self.bns):
      x = bn(ln(fc(x)))
    return x


def cosface_loss(embeddings, labels, centers, scale=64.0, m3=0.4):
  cos = F.normalize(embeddings, dim=1) @ F.normalize(centers, dim=1).t()
  logits = scale * (cos - m3 * F.one_hot(labels, cos.shape[1]).to(cos.dtype))
  return F.cross_entropy(logits, labels)


def make_train_step(model, num_classes, *, embed_dim=256, lr=1e-3, weight_decay=5e-4,
                    clip_norm=5.0, channels_last=False):
  """A step function (images uint8 NCHW, labels) -> loss, and the class centres it trains."""
  centers = nn.Parameter(torch.randn(num_classes, embed_dim) * 0.01)
  params = list(model.parameters()) + [centers]
  opt = torch.optim.AdamW(
      [{'params': [p for p in params if p.ndim > 1], 'weight_decay': weight_decay},
       {'params': [p for p in params if p.ndim <= 1], 'weight_decay': 0.0}], lr=lr)
  if channels_last:
    model.to(memory_format=torch.channels_last)
  model.train()

  def step(images, labels):
    opt.zero_grad(set_to_none=True)
    loss = cosface_loss(model(images), labels, centers)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip_norm)
    opt.step()
    return loss

  return step
