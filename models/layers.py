"""Layers shared by the backbones.

DepthwiseConv keeps nn.Conv's parameter layout (kernel [k, k, 1, C]) so checkpoints do not
depend on which implementation ran; `impl` picks how it is computed:

  'xla'      lax.conv_general_dilated(feature_group_count=C). What TPU/GPU run well; XLA's CPU
             backend runs it as a slow generic loop (64x32x32x128 3x3, forward+backward: ~0.9 s).
  'shifted'  the k*k taps as shifted, strided slices of the padded input times a per-channel
             weight, summed: one elementwise loop that XLA:CPU fuses and vectorises over C.
             Backward by autodiff.
  'shifted_vjp'  same forward, hand-written backward (custom_vjp): the input gradient as a
             shifted sum per output phase (a strided conv's transpose splits into s*s
             stride-1 convs with sub-kernels), instead of autodiff's s*s interior-padded
             scatters.
  'native'   C++ kernels run by XLA:CPU as FFI calls (models/native): one pass over the data
             for the forward, the input gradient and the kernel gradient. CPU and float32 only
             (other dtypes take 'shifted_vjp'); built with the machine's compiler on first use.
  'auto'     'native' on CPU ('shifted_vjp' when the native kernels cannot be built), 'xla'
             elsewhere (benchmarks/depthwise_conv.py and the README have the numbers).

All implementations compute the same function as 'xla' ('SAME' padding, TF convention: the
extra pad row/column goes at the bottom/right); tests/test_layers.py checks values and
gradients agree within float32 rounding.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLS = ('auto', 'xla', 'shifted', 'shifted_vjp', 'native')
CONV_IMPLS = ('auto', 'xla', 'matmul', 'native')
# What 'auto' picks on the CPU backend without the native kernels; TPU/GPU always get 'xla'.
CPU_DEFAULT_IMPL = 'shifted_vjp'


def resolve_impl(impl):
  """Maps 'auto' to the implementation for the current default backend."""
  if impl not in IMPLS:
    raise ValueError(f'depthwise impl must be one of {IMPLS}, got {impl!r}')
  return _native_or(impl, CPU_DEFAULT_IMPL)


def same_padding(size, kernel_size, stride):
  """(pad_before, pad_after, out_size) of 'SAME' padding, as XLA computes it."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel_size - size, 0)
  return total // 2, total - total // 2, out


def _tap_view(xp, i, j, stride, out_hw):
  """xp[:, i::stride, j::stride, :][:, :out_h, :out_w]: the input seen by kernel tap (i, j)."""
  b, _, _, c = xp.shape
  oh, ow = out_hw
  return jax.lax.slice(xp, (0, i, j, 0),
                       (b, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1, c),
                       (1, stride, stride, 1))


def _sum_of_taps(xp, taps, stride, out_hw):
  """sum over taps (i, j, w) of _tap_view(xp, i, j) * w."""
  out = None
  for i, j, w in taps:
    view = _tap_view(xp, i, j, stride, out_hw)
    out = view * w if out is None else out + view * w
  return out


def _pad_same(x, k, stride):
  _, h, w, _ = x.shape
  pt, pb, oh = same_padding(h, k, stride)
  pl, pr, ow = same_padding(w, k, stride)
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  return xp, (pt, pl), (oh, ow)


def depthwise_xla(x, kernel, stride):
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1])


def depthwise_shifted(x, kernel, stride):
  k = kernel.shape[0]
  xp, _, out_hw = _pad_same(x, k, stride)
  taps = [(i, j, kernel[i, j, 0]) for i in range(k) for j in range(k)]
  return _sum_of_taps(xp, taps, stride, out_hw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_shifted_vjp(x, kernel, stride):
  return depthwise_shifted(x, kernel, stride)


def _shifted_vjp_fwd(x, kernel, stride):
  return depthwise_shifted(x, kernel, stride), (x, kernel)


def _shifted_vjp_bwd(stride, residuals, g):
  x, kernel = residuals
  b, h, w, c = x.shape
  k, s = kernel.shape[0], stride
  xp, (pt, pl), (oh, ow) = _pad_same(x, k, s)
  # Kernel gradient: one product-and-reduce per tap (XLA:CPU runs reduce(mul) fused).
  dkernel = jnp.stack([
      jnp.sum(_tap_view(xp, i, j, s, (oh, ow)) * g, axis=(0, 1, 2))
      for i in range(k) for j in range(k)]).reshape(k, k, 1, c).astype(kernel.dtype)
  # Input gradient. Padded-input row s*q + r receives g[q - m] * kernel[r + s*m] for m >= 0:
  # for each phase (r1, r2) a stride-1 shifted sum of g with the flipped sub-kernel
  # kernel[r1::s, r2::s]. The s*s phases are then interleaved back into rows/columns.
  q1, q2 = -(-xp.shape[1] // s), -(-xp.shape[2] // s)
  taps_max = -(-k // s)
  gp = jnp.pad(g, ((0, 0), (taps_max - 1, q1 - oh), (taps_max - 1, q2 - ow), (0, 0)))
  phase_rows = []
  for r1 in range(s):
    phases = []
    for r2 in range(s):
      taps = [(taps_max - 1 - m1, taps_max - 1 - m2, kernel[r1 + s * m1, r2 + s * m2, 0])
              for m1 in range(-(-(k - r1) // s)) for m2 in range(-(-(k - r2) // s))]
      phases.append(_sum_of_taps(gp, taps, 1, (q1, q2)))
    phase_rows.append(jnp.stack(phases, axis=3))         # [b, q1, q2, s, c]
  dxp = jnp.stack(phase_rows, axis=2).reshape(b, q1 * s, q2 * s, c)
  return dxp[:, pt:pt + h, pl:pl + w].astype(x.dtype), dkernel


depthwise_shifted_vjp.defvjp(_shifted_vjp_fwd, _shifted_vjp_bwd)

def depthwise_native(x, kernel, stride):
  from models.native.ops import depthwise_native as fn  # pylint: disable=g-import-not-at-top
  return fn(x, kernel, stride)


_IMPL_FNS = {'xla': depthwise_xla, 'shifted': depthwise_shifted,
             'shifted_vjp': depthwise_shifted_vjp, 'native': depthwise_native}


def depthwise_conv(x, kernel, stride=1, impl='auto'):
  """Depthwise conv of NHWC `x` with kernel [k, k, 1, C], 'SAME' padding."""
  impl = resolve_impl(impl)
  if impl == 'native' and x.dtype != jnp.float32:
    impl = CPU_DEFAULT_IMPL  # the native kernels are float32 only
  return _IMPL_FNS[impl](x, kernel, stride)


class DepthwiseConv(nn.Module):
  """k x k depthwise convolution, 'SAME' padding, no bias."""
  kernel_size: int = 3
  strides: int = 1
  dtype: jnp.dtype = jnp.float32
  impl: str = 'auto'  # auto | xla | shifted | shifted_vjp (see module docstring)

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, k, 1, c))
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    return depthwise_conv(x, kernel, self.strides, self.impl)


def resolve_conv_impl(impl):
  """Maps 'auto' to 'native' on the CPU backend (when the kernels build), 'matmul' without them,
  and 'xla' elsewhere."""
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv impl must be one of {CONV_IMPLS}, got {impl!r}')
  return _native_or(impl, 'matmul')


def _native_or(impl, cpu_fallback):
  """'auto' -> 'native' on CPU when the kernels build, else `cpu_fallback`; 'xla' elsewhere."""
  on_cpu = jax.default_backend() == 'cpu'
  if impl == 'native' and not on_cpu:
    raise ValueError(f'the native kernels run on CPU only, not {jax.default_backend()}: '
                     "use 'auto' or 'xla'")
  if impl != 'auto':
    return impl
  if not on_cpu:
    return 'xla'
  from models.native import ops as native  # pylint: disable=g-import-not-at-top
  return 'native' if native.available() else cpu_fallback


def conv_matmul(x, kernel, stride, padding, native=False):
  """Dense conv of NHWC `x` with an HWIO kernel as one matrix product (im2col for k > 1).

  XLA:CPU computes a convolution's kernel gradient as a convolution whose window is the whole
  feature map, with transposes on both inputs; written as a dot, the same gradient is a plain
  [Cin, B*H*W] x [B*H*W, Cout] product. For k > 1 the k*k shifted, strided views are stacked on
  the channel axis in (row, column, channel) order, which is the HWIO kernel's row-major order.
  native=True (float32): products over many pixels take their weight gradient from the native
  kernel (models/native/ops.pixel_matmul), which skips the transposes XLA puts before that dot;
  k > 1 convs with few input channels (the RGB stem) run directly (ops.conv_direct), without
  the k*k-times-larger patch tensor.
  """
  kh, kw, cin, cout = kernel.shape
  if native and padding == 'SAME' and x.dtype == jnp.float32:
    from models.native import ops  # pylint: disable=g-import-not-at-top
    if ops.direct_conv_fits(kernel.shape):
      return ops.conv_direct(x, kernel, stride,
                             functools.partial(_conv_im2col_same, stride=stride))
  if kh == 1 and kw == 1 and stride == 1:
    patches = x
  else:
    if padding == 'SAME':
      xp, _, out_hw = _pad_same(x, kh, stride)  # Conv's kernels are square
    else:
      (pt, pb), (pl, pr) = padding
      xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
      out_hw = ((xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1)
    cols = [_tap_view(xp, i, j, stride, out_hw) for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
  w = kernel.reshape(kh * kw * cin, cout)
  if native and patches.dtype == jnp.float32 and patches.ndim == 4:
    from models.native import ops  # pylint: disable=g-import-not-at-top
    if ops.xtg_pays(patches.shape[1] * patches.shape[2], w.shape[0], cout):
      return ops.pixel_matmul(patches, w)
  return jnp.dot(patches, w)


def _conv_im2col_same(x, kernel, stride):
  return conv_matmul(x, kernel, stride, 'SAME')


def conv_xla(x, kernel, stride, padding):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class Conv(nn.Module):
  """Dense k x k convolution with nn.Conv's parameters ('kernel' HWIO, optional 'bias').

  `impl`: 'xla' (lax.conv_general_dilated), 'matmul' (conv_matmul), 'native' (conv_matmul with
  the native weight gradient), 'auto' (see resolve_conv_impl).
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  padding: object = 'SAME'
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    impl = resolve_conv_impl(self.impl)
    if impl == 'xla':
      y = conv_xla(x, kernel, self.strides, self.padding)
    else:
      y = conv_matmul(x, kernel, self.strides, self.padding, native=impl == 'native')
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y


class NativeBatchNorm(nn.Module):
  """nn.BatchNorm over the last axis (same 'scale'/'bias' params and 'mean'/'var' batch_stats,
  same formulas: fast variance, running averages with `momentum`) with the training-mode channel
  reductions done by the native CPU kernels (models/native/ops.batch_norm_train). float32.

  Used by backbones in place of nn.BatchNorm when their conv impl resolves to 'native' (see
  use_native_batch_norm); give it the name nn.BatchNorm would have had so checkpoints match.
  """
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    from models.native import ops  # pylint: disable=g-import-not-at-top
    c = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), (c,))
    scale = self.param('scale', nn.initializers.ones, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    if self.use_running_average:
      return (x - ra_mean.value) * (scale * jax.lax.rsqrt(ra_var.value + self.epsilon)) + bias
    y = ops.batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      # The same native call as batch_norm_train's forward on the same input: XLA merges the two
      # (one channel_sums call per layer in the compiled step; checked on the HLO).
      mean, var = ops.batch_stats(jax.lax.stop_gradient(x))
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


def use_native_batch_norm(conv_impl, dtype):
  """Batch norm after a conv runs natively when the convs do (CPU, float32)."""
  return resolve_conv_impl(conv_impl) == 'native' and jnp.dtype(dtype) == jnp.float32
