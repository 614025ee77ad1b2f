"""The document corner detector (issue 15): uint8 NHWC image -> four corners and a presence score.

A MobileNetV2 trunk (ImageNet weights load into it by torchvision's names, models/mobilenet_v2.py)
tapped at strides 8, 16 and 32; the taps are projected to `head_channels`, upsampled to stride 8
and summed (a one-level feature pyramid), then two 3x3 convolutions make four heatmaps, one per
corner, clockwise from the page's top-left. Each corner is the soft-argmax of its heatmap: the
expectation of the cell centres under the heatmap's spatial softmax, a sub-pixel position that
the coordinate loss trains end to end (DSNT, Nibali et al. 2018). A pooled logit of the deepest
tap says whether a document is in view at all.

Corners are in [0, 1] image coordinates (x right, y down) of the input square, i.e. of the whole
photo stretched to a square as inference stretches it (inference/images.py).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.embedder import IMAGENET_MEAN, IMAGENET_STD
from models.layers import Conv
from models.mobilenet_v2 import MobileNetV2


def cell_centres(h, w):
  """(ys [H], xs [W]) of the heatmap cells' centres in [0, 1] image coordinates."""
  return (jnp.arange(h, dtype=jnp.float32) + 0.5) / h, (jnp.arange(w, dtype=jnp.float32) + 0.5) / w


def bilinear_weights(n_in, n_out):
  """[n_out, n_in] float32: jax.image.resize's 'bilinear' along one axis (half-pixel centres,
  antialiased, edge samples renormalised), as a matrix. The head upsamples with these instead of
  calling jax.image.resize: the same einsum jax runs, but one the ONNX export can take with a
  symbolic batch (jax2onnx's resize needs every dimension static)."""
  inv_scale = n_in / n_out
  sample = (np.arange(n_out) + 0.5) * inv_scale - 0.5
  x = np.abs(sample[None, :] - np.arange(n_in)[:, None]) / max(inv_scale, 1.0)
  w = np.maximum(0.0, 1.0 - x)                                       # [n_in, n_out]
  total = w.sum(0, keepdims=True)
  w = np.where(np.abs(total) > 1000 * np.finfo(np.float32).eps, w / np.where(total != 0, total, 1), 0)
  w = np.where(((sample >= -0.5) & (sample <= n_in - 0.5))[None, :], w, 0)
  return np.ascontiguousarray(w.T, np.float32)


def upsample_bilinear(x, h, w):
  """[B, h0, w0, C] -> [B, h, w, C], equal to jax.image.resize(x, (B, h, w, C), 'bilinear')."""
  wy = jnp.asarray(bilinear_weights(x.shape[1], h), x.dtype)
  wx = jnp.asarray(bilinear_weights(x.shape[2], w), x.dtype)
  return jnp.einsum('bhwc,Hh,Ww->bHWc', x, wy, wx)


def soft_argmax(logits):
  """logits [B, H, W, K] -> (corners [B, K, 2] as (x, y) in [0, 1], log-probabilities [B, H, W, K])."""
  b, h, w, k = logits.shape
  logp = jax.nn.log_softmax(logits.reshape(b, h * w, k).astype(jnp.float32), axis=1)
  p = jnp.exp(logp).reshape(b, h, w, k)
  ys, xs = cell_centres(h, w)
  x = jnp.einsum('bhwk,w->bk', p, xs)
  y = jnp.einsum('bhwk,h->bk', p, ys)
  return jnp.stack([x, y], -1), logp.reshape(b, h, w, k)


def peak_soft_argmax(logits, radius=2):
  """Soft-argmax within (2 radius + 1)^2 cells around each heatmap's peak: [B, K, 2] in [0, 1].
  The global soft-argmax (trained) is pulled toward the map's centre by probability far from the
  peak (a background corner-like spot, a second document); the peak window is not.
  On the MIDV frames: median corner error 3.3% of the diagonal against 4.4% (README)."""
  b, h, w, k = logits.shape
  flat = logits.reshape(b, h * w, k).astype(jnp.float32)
  peak = jnp.argmax(flat, axis=1)                                  # [B, K]
  # Truncating division and a product, not // and %: the same on these non-negative indices,
  # and what the ONNX export can take with a symbolic batch (jax2onnx's rem cannot).
  pi = jax.lax.div(peak, jnp.asarray(w, peak.dtype))
  pj = peak - pi * w
  ii, jj = jnp.arange(h)[None, :, None, None], jnp.arange(w)[None, None, :, None]
  near = (jnp.abs(ii - pi[:, None, None, :]) <= radius) & (jnp.abs(jj - pj[:, None, None, :]) <= radius)
  x = jnp.where(near, logits.astype(jnp.float32), -jnp.inf)
  p = jax.nn.softmax(x.reshape(b, h * w, k), axis=1).reshape(b, h, w, k)
  ys, xs = cell_centres(h, w)
  return jnp.stack([jnp.einsum('bhwk,w->bk', p, xs), jnp.einsum('bhwk,h->bk', p, ys)], -1)


class CornerHead(nn.Module):
  """Trunk taps -> {'corners', 'heatmaps', 'presence'} (see CornerDetector)."""
  channels: int = 64
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, taps, train=False):
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                                   name=name)
    conv = lambda features, k, name: Conv(features, k, dtype=self.dtype, impl=self.conv_impl,
                                          name=name)
    h, w = taps[0].shape[1:3]
    fused = 0.0
    for n, t in enumerate(taps):
      t = nn.relu(bn(f'lateral{n}_bn')(conv(self.channels, 1, f'lateral{n}')(t)))
      if t.shape[1:3] != (h, w):
        t = upsample_bilinear(t, h, w)
      fused = fused + t
    y = fused
    for n in range(2):
      y = nn.relu(bn(f'fuse{n}_bn')(conv(self.channels, 3, f'fuse{n}')(y)))
    heatmaps = Conv(4, 1, use_bias=True, dtype=self.dtype, impl=self.conv_impl,
                    name='heatmaps')(y).astype(jnp.float32)
    corners, _ = soft_argmax(heatmaps)
    pooled = jnp.mean(taps[-1].astype(jnp.float32), axis=(1, 2))
    presence = nn.Dense(1, name='presence')(pooled)[:, 0]
    return {'corners': corners, 'heatmaps': heatmaps, 'presence': presence,
            'peak_corners': peak_soft_argmax(heatmaps)}


class CornerDetector(nn.Module):
  """Returns {'corners': [B, 4, 2] in [0, 1] (soft-argmax, trained), 'peak_corners' (the same
  around each heatmap's peak, what inference uses), 'heatmaps': [B, H/8, W/8, 4] logits,
  'presence': [B] logit}. Parameters: 'backbone' (ImageNet-loadable) and 'head' (new), the
  split train.create_optimizer's backbone_lr_factor uses."""
  width: float = 1.0
  feature_taps: tuple = (6, 13, 16)  # MobileNetV2 blocks at strides 8, 16, 32
  head_channels: int = 64
  frozen_features: int = 0
  dtype: jnp.dtype = jnp.float32
  depthwise_impl: str = 'auto'
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, images, train=False):
    x = images.astype(jnp.float32) / 255.0
    x = ((x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)).astype(self.dtype)
    taps = MobileNetV2(width=self.width, dtype=self.dtype, frozen_features=self.frozen_features,
                       depthwise_impl=self.depthwise_impl, conv_impl=self.conv_impl,
                       feature_taps=tuple(self.feature_taps), name='backbone')(x, train=train)
    return CornerHead(self.head_channels, self.dtype, self.conv_impl, name='head')(taps, train)


def build_detector(model_config):
  return CornerDetector(width=model_config.width, feature_taps=tuple(model_config.feature_taps),
                        head_channels=model_config.head_channels,
                        frozen_features=model_config.get('frozen_features', 0),
                        dtype=jnp.dtype(model_config.dtype),
                        depthwise_impl=model_config.depthwise_impl,
                        conv_impl=model_config.get('conv_impl', 'auto'))


def init_from_imagenet(variables, source):
  """The detector's variables with its trunk replaced by ImageNet MobileNetV2 weights (the
  blocks up to the last tap; the rest of the published network is not used)."""
  from models import pretrained as cw  # pylint: disable=import-outside-toplevel
  full = cw.convert_state_dict('mobilenet_v2', cw.read_torch_state_dict(
      cw.resolve_weight_source(source)))
  out = {k: dict(v) for k, v in variables.items()}
  for kind in ('params', 'batch_stats'):
    mine = variables[kind]['backbone']
    cw.check_variables({k: full[kind][k] for k in mine}, mine, source)
    out[kind]['backbone'] = jax.tree.map(lambda t, l: np.asarray(l, dtype=t.dtype), mine,
                                         {k: full[kind][k] for k in mine})
  return out
