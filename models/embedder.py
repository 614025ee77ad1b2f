"""The embedding model: uint8 NHWC images -> (unnormalised) embeddings.

Normalisation lives inside the model, so training, evaluation, inference and exported artefacts
all take the same raw pixels.
"""
import flax.linen as nn
import jax.numpy as jnp

from errors import ConfigError
from models.heads import EmbeddingHead
from models.efficientnet_lite import EfficientNetLite0  # issue 5: ImageNet-pretrainable
from models.lcnet import LCNet
from models.mobilenet_v2 import MobileNetV2  # issue 5: ImageNet-pretrainable
from models.resnet import ResNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONES = ('lcnet', 'resnet', 'mobilenet_v2', 'efficientnet_lite0')


def create_backbone(model_config, dtype):
  name = model_config.backbone
  # Checked before any backbone is built: the others return a bare map, which Embedder would
  # fail to unpack deep inside tracing.
  side_taps = tuple(model_config.get('tap_blocks', ()))
  if side_taps and name != 'mobilenet_v2':
    raise ConfigError(f'config.model.tap_blocks={side_taps}: only the mobilenet_v2 backbone has '
                      'side taps; set config.model.tap_blocks=()')
  # .get: config.json files written before conv_impl existed still build (and fingerprint) alike.
  impls = dict(depthwise_impl=model_config.depthwise_impl,
               conv_impl=model_config.get('conv_impl', 'auto'))
  if name == 'lcnet':
    return LCNet(scale=model_config.width, dtype=dtype, **impls)
  if name == 'resnet':
    return ResNet(depth=model_config.resnet_depth, dtype=dtype)
  # issue 5 (localized): backbones with published ImageNet weights (models/pretrained.py)
  if name == 'mobilenet_v2':
    return MobileNetV2(width=model_config.width, dtype=dtype,
                       frozen_features=model_config.get('frozen_features', 0),
                       side_taps=side_taps, **impls)
  if name == 'efficientnet_lite0':
    return EfficientNetLite0(dtype=dtype, **impls)
  raise ValueError(f'config.model.backbone: unknown backbone {name!r} ({" | ".join(BACKBONES)})')


class Embedder(nn.Module):
  model_config: dict

  @nn.compact
  def __call__(self, images, train=False):
    cfg = self.model_config
    dtype = jnp.dtype(cfg.dtype)
    x = images.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    x = x.astype(dtype)
    x = create_backbone(cfg, dtype)(x, train=train)
    taps = ()
    if cfg.get('tap_blocks', ()):  # (last map, [side tap maps]): the grid_pca head reads both
      x, taps = x
      self.sow('intermediates', 'backbone_taps', tuple(taps))  # benchmarks/whitening_sweep.py
    self.sow('intermediates', 'backbone', x)  # for the uncertainty head; a no-op otherwise
    return EmbeddingHead(kind=cfg.head, squeeze_channels=cfg.squeeze_channels,
                         embed_dim=cfg.embed_dim, dropout=cfg.dropout, dtype=dtype,
                         conv_impl=cfg.get('conv_impl', 'auto'), grid=cfg.get('grid', 2),
                         tap_grid=cfg.get('tap_grid', 4), power=cfg.get('power', 1.0),
                         name='head')(x, train=train, taps=taps)


def build_model(model_config):
  return Embedder(model_config)
