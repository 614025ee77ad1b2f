"""models/native: the CPU kernels compute what XLA computes (values and gradients), split over a
batch-sharded mesh without gathering, and their absence falls back cleanly."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from models import layers
from models.native import ops

pytestmark = pytest.mark.skipif(not ops.available(), reason='native CPU kernels not built here')


def _assert_close(got, want, what, atol=2e-6):
  # Float32 rounding of sums of products, relative to the largest magnitude (as test_layers).
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, what
  scale = np.max(np.abs(want))
  assert scale > 0, what
  np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=atol, err_msg=what)


def _depthwise_vjp(impl, x, w, stride, ct):
  y, vjp = jax.vjp(lambda x, w: layers.depthwise_conv(x, w, stride, impl), x, w)
  return (y,) + vjp(ct)


# Channel counts with a compiled-in fast path (8, 16, 24, 128) and without (5, 12); inputs
# smaller than the kernel; odd sizes (asymmetric 'SAME' pads at stride 2); 7x7 kernels.
@pytest.mark.parametrize('n,hw,c,k,stride', [
    (1, (8, 8), 8, 3, 1), (3, (9, 7), 8, 3, 2), (2, (6, 10), 5, 3, 1), (2, (7, 7), 12, 5, 2),
    (2, (16, 16), 16, 3, 2), (2, (11, 13), 24, 5, 1), (1, (4, 4), 128, 5, 1),
    (2, (3, 2), 16, 5, 1), (2, (2, 3), 8, 5, 2), (1, (9, 9), 16, 7, 1),
])
def test_depthwise_matches_grouped_conv(n, hw, c, k, stride):
  rng = np.random.default_rng(k * 100 + c)
  x = jnp.asarray(rng.standard_normal((n,) + hw + (c,), np.float32))
  w = jnp.asarray(rng.standard_normal((k, k, 1, c), np.float32))
  out_hw = tuple(-(-d // stride) for d in hw)
  ct = jnp.asarray(rng.standard_normal((n,) + out_hw + (c,), np.float32))
  want = _depthwise_vjp('xla', x, w, stride, ct)
  got = jax.jit(_depthwise_vjp, static_argnums=(0, 3))('native', x, w, stride, ct)
  for name, g, r in zip(('output', 'd_input', 'd_kernel'), got, want):
    _assert_close(g, r, f'{n} {hw} c={c} k={k} s={stride}: {name}')


@pytest.mark.parametrize('a,b', [(8, 16), (27, 8), (5, 7), (32, 40)])
def test_pixel_matmul_gradients_match_dot(a, b):
  rng = np.random.default_rng(a * b)
  x = jnp.asarray(rng.standard_normal((3, 9, 7, a), np.float32))
  w = jnp.asarray(rng.standard_normal((a, b), np.float32))
  ct = jnp.asarray(rng.standard_normal((3, 9, 7, b), np.float32))
  want_y, want_vjp = jax.vjp(jnp.dot, x, w)
  got_y, got_vjp = jax.vjp(ops.pixel_matmul, x, w)
  _assert_close(got_y, want_y, 'y')
  for name, g, r in zip(('dx', 'dw'), got_vjp(ct), want_vjp(ct)):
    _assert_close(g, r, f'{a}x{b}: {name}')


@pytest.mark.parametrize('k,stride,cin,cout,hw,kernels', [
    (3, 2, 3, 8, (32, 32), ('conv_forward', 'conv_kernel_grad')),  # RGB stem: direct
    (3, 2, 3, 16, (9, 7), ('conv_forward', 'conv_kernel_grad')),
    (5, 1, 2, 5, (7, 9), ('conv_forward', 'conv_kernel_grad')),    # no compiled-in Co
    (1, 1, 8, 16, (16, 16), ('xtg',)),                             # pointwise: native dW
    (3, 1, 8, 8, (16, 16), ('xtg',)),                              # im2col + native dW
])
def test_native_dense_conv_matches_xla(k, stride, cin, cout, hw, kernels):
  rng = np.random.default_rng(k * cin)
  x = jnp.asarray(rng.standard_normal((2,) + hw + (cin,), np.float32))
  w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32))
  native = lambda x, w: jnp.sum(layers.conv_matmul(x, w, stride, 'SAME', native=True) ** 2)
  plain = lambda x, w: jnp.sum(layers.conv_xla(x, w, stride, 'SAME') ** 2)
  jaxpr = str(jax.make_jaxpr(jax.grad(native, argnums=(0, 1)))(x, w))
  assert all(f'docembed_{name}' in jaxpr for name in kernels), kernels
  want = jax.value_and_grad(plain, argnums=(0, 1))(x, w)
  got = jax.jit(jax.value_and_grad(native, argnums=(0, 1)))(x, w)
  for name, g, r in zip(('loss', 'dx', 'dw'), jax.tree.leaves(got), jax.tree.leaves(want)):
    _assert_close(g, r, f'k={k} s={stride} {cin}->{cout}: {name}', atol=1e-5)


def test_native_weight_gradient_only_where_it_pays():
  # A late layer (4x4 pixels, 256 -> 256): the per-image partials would outweigh the pixels.
  assert not ops.xtg_pays(16, 256, 256)
  assert ops.xtg_pays(64 * 64, 8, 16)
  x = jnp.ones((2, 4, 4, 256))
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(
      layers.conv_matmul(x, w, 1, 'SAME', native=True))))(jnp.ones((1, 1, 256, 256))))
  assert 'docembed_' not in jaxpr


def test_batch_sharded_calls_run_per_shard_without_gathering():
  """On a data-parallel mesh each device runs the kernels on its own images only."""
  mesh = jax.make_mesh((4, 2), ('data', 'model'))
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((8, 9, 7, 16), np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, 1, 16), np.float32))
  pw = jnp.asarray(rng.standard_normal((16, 8), np.float32))

  def loss(x, w, pw, impl):
    y = layers.depthwise_conv(x, w, 2, impl)
    y = ops.pixel_matmul(y, pw) if impl == 'native' else jnp.dot(y, pw)
    return jnp.sum(y ** 2)

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
  xs = jax.device_put(x, NamedSharding(mesh, P(('data', 'model'))))
  got, want = step(xs, w, pw, 'native'), step(x, w, pw, 'xla')
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    _assert_close(g, r, 'sharded', atol=1e-5)
  assert got[1][0].sharding.spec[0] == ('data', 'model')
  hlo = step.lower(xs, w, pw, 'native').compile().as_text()
  calls = [l for l in hlo.splitlines() if 'custom_call_target="docembed_' in l]
  assert len(calls) == 4, calls  # forward, input grad, kernel grad, xtg
  assert all('f32[1,' in l.split('custom-call(')[0] for l in calls), calls  # 8 images / 8
  assert 'all-gather' not in hlo


def test_without_a_compiler_auto_falls_back_with_one_warning(tmp_path):
  code = ('from models import layers; from models.native import ops; '
          'print(ops.available(), layers.resolve_impl("auto"), layers.resolve_conv_impl("auto"))')
  env = dict(os.environ, CXX=str(tmp_path / 'no-such-compiler'),
             DOCEMBED_NATIVE_CACHE=str(tmp_path / 'cache'), JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-c', code], cwd=os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert r.stdout.split() == ['False', layers.CPU_DEFAULT_IMPL, 'matmul'], r.stdout
  assert r.stderr.count('native CPU kernels unavailable') == 1, r.stderr
  assert not os.listdir(tmp_path / 'cache')  # no half-written library left behind


@pytest.mark.parametrize('sharded', [False, True])
def test_native_batch_norm_trains_like_flax(sharded):
  """Same parameters and statistics as nn.BatchNorm; loss, gradients and the running-average
  update equal within float32 rounding; eval mode too. sharded: the batch over 8 devices."""
  import flax.linen as nn
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((8, 9, 7, 16), np.float32) * 3 + 1)
  kw = dict(momentum=0.9, epsilon=1e-5, name='BatchNorm_0')

  class Net(nn.Module):
    native: bool
    train: bool = True

    @nn.compact
    def __call__(self, x):
      bn = layers.NativeBatchNorm if self.native else nn.BatchNorm
      return jnp.sin(bn(use_running_average=not self.train, **kw)(x))

  v = Net(False).init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, Net(True).init(jax.random.key(0), x)) == jax.tree.map(
      jnp.shape, v)
  v = {'params': {'BatchNorm_0': {'scale': jnp.asarray(rng.standard_normal(16), jnp.float32),
                                  'bias': jnp.asarray(rng.standard_normal(16), jnp.float32)}},
       'batch_stats': v['batch_stats']}

  def loss(params, x, native):
    y, new = Net(native).apply({'params': params, 'batch_stats': v['batch_stats']}, x,
                               mutable=['batch_stats'])
    return jnp.sum(y), new

  if sharded:
    x_in = jax.device_put(x, NamedSharding(jax.make_mesh((8,), ('data',)), P('data')))
  else:
    x_in = x
  want = jax.value_and_grad(loss, has_aux=True)(v['params'], x, False)
  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
  (got_loss, got_stats), (got_dparams, got_dx) = fn(v['params'], x_in, True)
  _assert_close(got_loss, want[0][0], 'loss')
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(got_stats),
                          jax.tree.leaves(want[0][1])):
    _assert_close(g, r, jax.tree_util.keystr(path))
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(got_dparams),
                          jax.tree.leaves(want[1])):
    _assert_close(g, r, jax.tree_util.keystr(path), atol=1e-5)
  _assert_close(got_dx, jax.grad(lambda x: loss(v['params'], x, False)[0])(x), 'dx', atol=1e-5)
  evals = [Net(n, train=False).apply({'params': v['params'], 'batch_stats': got_stats[
      'batch_stats']}, x) for n in (True, False)]
  _assert_close(evals[0], evals[1], 'eval')
