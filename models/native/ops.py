"""CPU kernels XLA does badly, as FFI calls (cpu_kernels.cc): the depthwise convolution and the
weight gradient of pointwise convolutions.

Built on first use with the machine's C++ compiler into a cache folder, then loaded and
registered with jax.ffi. When that is not possible (no compiler, another platform), available()
is False and says why once; models/layers.py then falls back to the pure-JAX formulations.

Why native: on CPU the depthwise layers were where the training step spent its time. XLA:CPU
runs a grouped convolution as a generic loop, and the pure-JAX formulation's kernel gradient
makes k*k passes over the activations per layer; these kernels make one. A pointwise conv's
weight gradient (a contraction over every pixel) XLA:CPU computes after transposing both
operands; the native one reads them once. README "Performance on CPU" has the numbers.
"""
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cpu_kernels.cc')
TARGETS = {'docembed_dw_forward': 'DwForward', 'docembed_dw_input_grad': 'DwInputGrad',
           'docembed_dw_kernel_grad': 'DwKernelGrad', 'docembed_xtg': 'PixelXtg',
           'docembed_conv_forward': 'ConvForwardHandler',
           'docembed_conv_kernel_grad': 'ConvKernelGradHandler',
           'docembed_channel_sums': 'ChannelSumsHandler',
           'docembed_channel_sums2': 'ChannelSums2Handler'}
# -march=native: the library is built on (and cached per CPU of) the machine that runs it.
CXXFLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC')


def cache_dir():
  return os.environ.get('DOCEMBED_NATIVE_CACHE') or os.path.join(
      os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'docembed', 'native')


def _cpu_signature():
  try:
    with open('/proc/cpuinfo') as f:
      lines = [l for l in f if l.startswith(('model name', 'flags'))][:2]
  except OSError:
    lines = []
  return platform.machine() + ''.join(lines)


def _library_path(compiler):
  import jaxlib  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  for part in (open(SOURCE, 'rb').read(), ' '.join(CXXFLAGS).encode(), compiler.encode(),
               jaxlib.__version__.encode(), _cpu_signature().encode()):
    h.update(part)
  return os.path.join(cache_dir(), f'cpu_kernels_{h.hexdigest()[:16]}.so')


def _build(path, compiler):
  """Compiles to a temporary name in the cache folder, then renames (atomic for readers)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
  os.close(fd)
  cmd = [compiler, *CXXFLAGS, '-isystem', jax.ffi.include_dir(), SOURCE, '-o', tmp]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      last = (proc.stderr.strip().splitlines() or ['no output'])[-1]
      raise RuntimeError(f'{compiler} failed ({proc.returncode}): {last}')
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@functools.cache
def _load():
  """(True, path) once the FFI targets are registered, else (False, reason)."""
  if platform.system() != 'Linux' or platform.machine() not in ('x86_64', 'aarch64'):
    return False, 'native CPU kernels are built for Linux x86_64/aarch64 only'
  compiler = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
  if not compiler:
    return False, 'no C++ compiler (g++/c++ or $CXX) to build the native CPU kernels'
  try:
    path = _library_path(compiler)
    if not os.path.exists(path):
      _build(path, compiler)
    lib = ctypes.cdll.LoadLibrary(path)
    for target, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                  platform='cpu')
  except (OSError, RuntimeError, AttributeError) as e:
    return False, f'native CPU kernels unavailable: {e}'
  return True, path


_warned = []


def available():
  """Whether the native kernels can run here; logs the reason once when they cannot."""
  ok, why = _load()
  if not ok and not _warned:
    logging.warning('%s; using the pure-JAX formulations.', why)
    _warned.append(why)
  return ok


def _call(target, out_shape, *args, **attrs):
  ok, why = _load()
  if not ok:
    raise RuntimeError(why)
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(out_shape, jnp.float32))(
      *args, **{k: np.int64(v) for k, v in attrs.items()})


def _batch_parallel(target, rule, batched):
  """The FFI call `target` as an op XLA may split over dim 0 (each image is independent).

  Without this, XLA's partitioner knows nothing about the custom call and would gather a
  batch-sharded input onto every device. `batched[i]`: operand i is split with the batch (the
  kernel is replicated). Called as op(out_tail, attrs, *operands): out_tail is the result's
  shape without its batch dimension, attrs the call's attributes as sorted (name, value) pairs.
  """
  from jax.experimental.custom_partitioning import custom_partitioning  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  def call(out_tail, attrs, *operands):
    return _call(target, (operands[0].shape[0],) + out_tail, *operands, **dict(attrs))

  op = custom_partitioning(call, static_argnums=(0, 1))

  def shardings(mesh, arg_shapes):
    spec = arg_shapes[0].sharding.spec
    batch = spec[0] if len(spec) else None
    return (NamedSharding(mesh, P(batch)),
            tuple(NamedSharding(mesh, P(batch) if b else P()) for b in batched))

  def infer(out_tail, attrs, mesh, arg_shapes, result_shape):
    del out_tail, attrs, result_shape
    return shardings(mesh, arg_shapes)[0]

  def partition(out_tail, attrs, mesh, arg_shapes, result_shape):
    del result_shape
    out_sharding, arg_shardings = shardings(mesh, arg_shapes)
    return mesh, functools.partial(call, out_tail, attrs), out_sharding, arg_shardings

  # Every factor but the batch stays whole, listed in order of appearance (Shardy wants that).
  factors = dict.fromkeys(rule.replace(',', ' ').replace('->', ' ').split())
  op.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule,
                   need_replication_factors=tuple(f for f in factors if f != 'n'))
  return op


_forward_op = _batch_parallel('docembed_dw_forward', 'n h w c, i j c -> n p q c', (True, False))
_input_grad_op = _batch_parallel('docembed_dw_input_grad', 'n p q c, i j c -> n h w c',
                                 (True, False))
_kernel_grad_op = _batch_parallel('docembed_dw_kernel_grad', 'n h w c, n p q c -> n i j c',
                                  (True, True))


def _geometry(x_shape, k, stride):
  """(attrs, (out_h, out_w)) of 'SAME' padding, as the kernels take them."""
  from models.layers import same_padding  # pylint: disable=g-import-not-at-top
  _, h, w, _ = x_shape
  pt, _, oh = same_padding(h, k, stride)
  pl, _, ow = same_padding(w, k, stride)
  return (('pad_left', pl), ('pad_top', pt), ('stride', stride)), (oh, ow)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_native(x, kernel, stride):
  """Depthwise conv, NHWC float32 x, kernel [k, k, 1, C], 'SAME' padding (as depthwise_xla)."""
  return _forward(x, kernel, stride)[0]


def _forward(x, kernel, stride):
  k, c = kernel.shape[0], kernel.shape[-1]
  attrs, (oh, ow) = _geometry(x.shape, k, stride)
  y = _forward_op((oh, ow, c), attrs, x, kernel.reshape(k, k, c))
  return y, (x, kernel)


def _backward(stride, residuals, g):
  x, kernel = residuals
  k, c = kernel.shape[0], kernel.shape[-1]
  attrs, _ = _geometry(x.shape, k, stride)
  dx = _input_grad_op(x.shape[1:], attrs, g, kernel.reshape(k, k, c))
  per_image = _kernel_grad_op((k, k, c), attrs, x, g)
  return dx, jnp.sum(per_image, axis=0).reshape(kernel.shape)


depthwise_native.defvjp(_forward, _backward)


_xtg_op = _batch_parallel('docembed_xtg', 'n r a, n r b -> n a b', (True, True))


def xtg_pays(pixels, a, b):
  """Whether the native weight gradient beats XLA's dot for [pixels, a] x [pixels, b] per image.

  It writes one [a, b] partial per image; where that is not small against the activations
  read (late, low-resolution layers) XLA's dot is the better choice.
  """
  return pixels * (a + b) >= 4 * a * b


@jax.custom_vjp
def pixel_matmul(x, w):
  """x [N, H, W, A] @ w [A, B] (a pointwise conv, or im2col patches times the kernel), float32;
  the weight gradient by the native kernel."""
  return jnp.dot(x, w)


def _pixel_matmul_fwd(x, w):
  return jnp.dot(x, w), (x, w)


def _pixel_matmul_bwd(residuals, g):
  x, w = residuals
  n, a, b = x.shape[0], w.shape[0], w.shape[1]
  per_image = _xtg_op((a, b), (), x.reshape(n, -1, a), g.reshape(n, -1, b))
  return jnp.dot(g, w.T), jnp.sum(per_image, axis=0)


pixel_matmul.defvjp(_pixel_matmul_fwd, _pixel_matmul_bwd)


_conv_forward_op = _batch_parallel('docembed_conv_forward', 'n h w c, i j c o -> n p q o',
                                   (True, False))
_conv_kernel_grad_op = _batch_parallel('docembed_conv_kernel_grad',
                                       'n h w c, n p q o -> n i j c o', (True, True))

# Direct (im2col-free) dense convs: for few input channels, where im2col's patch tensor is
# k*k times the input and its matrix product is too thin to pay for it (the RGB stem).
DIRECT_CONV_MAX_IN = 4


def direct_conv_fits(kernel_shape):
  kh, kw, cin, cout = kernel_shape
  return kh == kw and kh > 1 and cin <= DIRECT_CONV_MAX_IN and cout <= 1024


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_direct(x, kernel, stride, pure_jax_fn):
  """Dense 'SAME' conv, NHWC float32 x, HWIO kernel. pure_jax_fn(x, kernel) computes the same
  conv in plain JAX; its VJP gives the input gradient (which XLA drops for an image input)."""
  return _conv_direct_fwd(x, kernel, stride, pure_jax_fn)[0]


def _conv_direct_fwd(x, kernel, stride, pure_jax_fn):
  attrs, (oh, ow) = _geometry(x.shape, kernel.shape[0], stride)
  return _conv_forward_op((oh, ow, kernel.shape[-1]), attrs, x, kernel), (x, kernel)


def _conv_direct_bwd(stride, pure_jax_fn, residuals, g):
  x, kernel = residuals
  attrs, _ = _geometry(x.shape, kernel.shape[0], stride)
  per_image = _conv_kernel_grad_op(kernel.shape, attrs, x, g)
  _, vjp = jax.vjp(lambda x: pure_jax_fn(x, kernel), x)
  return vjp(g)[0], jnp.sum(per_image, axis=0)


conv_direct.defvjp(_conv_direct_fwd, _conv_direct_bwd)


_channel_sums_op = _batch_parallel('docembed_channel_sums', 'n r c -> n s c', (True,))
_channel_sums2_op = _batch_parallel('docembed_channel_sums2', 'n r c, n r c -> n s c',
                                    (True, True))


def _sums(x, y=None):
  """(sum of x, sum of x*y) per channel over every axis but the last; y=None: x*x."""
  n, c = x.shape[0], x.shape[-1]
  flat = lambda a: a.reshape(n, -1, c)
  per_image = (_channel_sums_op((2, c), (), flat(x)) if y is None else
               _channel_sums2_op((2, c), (), flat(x), flat(y)))
  s = jnp.sum(per_image, axis=0)
  return s[0], s[1]


def batch_stats(x):
  """Per-channel batch mean and (biased) variance of NHWC float32 x, as flax's BatchNorm
  computes them (use_fast_variance: E[x^2] - E[x]^2, clipped at 0). Not differentiable: the
  running averages only; batch_norm_train differentiates through its own statistics."""
  m = x.size // x.shape[-1]
  s1, s2 = _sums(x)
  mean = s1 / m
  return mean, jnp.maximum(s2 / m - mean * mean, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon):
  """Training-mode batch norm of NHWC float32 x over (N, H, W) with the batch's statistics,
  as flax's nn.BatchNorm computes it; every channel reduction (forward and backward) native."""
  return _bn_fwd(x, scale, bias, epsilon)[0]


def _bn_fwd(x, scale, bias, epsilon):
  mean, var = batch_stats(x)
  inv = jax.lax.rsqrt(var + epsilon)
  return (x - mean) * (inv * scale) + bias, (x, mean, inv, scale)


def _bn_bwd(epsilon, residuals, g):
  del epsilon
  x, mean, inv, scale = residuals
  m = x.size // x.shape[-1]
  g_sum, gx_sum = _sums(g, x)
  dbias = g_sum
  dscale = inv * (gx_sum - mean * g_sum)           # sum of g * xhat
  xhat = (x - mean) * inv
  dx = (inv * scale) * (g - g_sum / m - xhat * (dscale / m))
  return dx, dscale, dbias


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)
