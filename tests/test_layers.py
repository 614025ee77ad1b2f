"""models/layers.py: every depthwise and dense conv implementation computes XLA's conv (values and
gradients)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import layers

FAST_IMPLS = [i for i in layers.IMPLS if i not in ('auto', 'xla')]


def _inputs(shape, k, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(shape, np.float32))
  w = jnp.asarray(rng.standard_normal((k, k, 1, shape[-1]), np.float32))
  return x, w


def _values_and_grads(impl, x, w, stride, ct):
  f = lambda x, w: layers.depthwise_conv(x, w, stride, impl)
  y, vjp = jax.vjp(f, x, w)
  return (y,) + vjp(ct)


def _assert_close(got, want, what):
  # Float32 rounding of sums of k*k (forward, dx) or B*H*W (dkernel) products: relative to the
  # largest magnitude, a few ulps times the number of terms.
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, what
  scale = np.max(np.abs(want))
  assert scale > 0, what
  np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=2e-6, err_msg=what)


@pytest.mark.parametrize('impl', FAST_IMPLS)
@pytest.mark.parametrize('k', [3, 5])
@pytest.mark.parametrize('stride', [1, 2])
# Even and odd sizes: at stride 2 'SAME' pads asymmetrically for even inputs.
@pytest.mark.parametrize('hw', [(8, 8), (9, 7)])
def test_matches_grouped_conv_values_and_grads(impl, k, stride, hw):
  x, w = _inputs((2,) + hw + (8,), k)
  out_hw = tuple(-(-n // stride) for n in hw)
  ct = jnp.asarray(np.random.default_rng(1).standard_normal((2,) + out_hw + (8,), np.float32))
  want = _values_and_grads('xla', x, w, stride, ct)
  got = jax.jit(_values_and_grads, static_argnums=(0, 3))(impl, x, w, stride, ct)
  for name, g, r in zip(('output', 'd_input', 'd_kernel'), got, want):
    _assert_close(g, r, f'{impl} k={k} stride={stride} {hw}: {name}')


@pytest.mark.parametrize('impl', FAST_IMPLS)
def test_second_use_in_a_network_trains_like_xla(impl):
  """Two stacked layers in bf16-free float32, under jit and value_and_grad, as the step uses it."""

  class Net(nn.Module):
    impl: str

    @nn.compact
    def __call__(self, x):
      x = layers.DepthwiseConv(3, 2, impl=self.impl)(x)
      x = nn.relu(x)
      return layers.DepthwiseConv(5, 1, impl=self.impl)(x)

  x, _ = _inputs((2, 16, 16, 4), 3)
  params = Net('xla').init(jax.random.key(0), x)
  loss = lambda p, impl: jnp.sum(Net(impl).apply(p, x) ** 2)
  want_l, want_g = jax.value_and_grad(loss)(params, 'xla')
  got_l, got_g = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, impl)
  _assert_close(got_l, want_l, 'loss')
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(got_g), jax.tree.leaves(want_g)):
    _assert_close(g, r, jax.tree_util.keystr(path))


def test_parameter_layout_is_the_same_for_every_impl():
  x = jnp.zeros((1, 8, 8, 6))
  shapes = {impl: jax.tree.map(jnp.shape, layers.DepthwiseConv(5, impl=impl).init(
      jax.random.key(0), x)) for impl in layers.IMPLS}
  assert all(s == {'params': {'kernel': (5, 5, 1, 6)}} for s in shapes.values()), shapes


def test_auto_picks_per_backend():
  from models.native import ops as native
  if jax.default_backend() != 'cpu':
    want = 'xla'
  else:
    want = 'native' if native.available() else layers.CPU_DEFAULT_IMPL
  assert layers.resolve_impl('auto') == want
  assert layers.resolve_impl('xla') == 'xla'


def test_unknown_impl_is_a_clear_error():
  with pytest.raises(ValueError, match='depthwise impl must be one of'):
    layers.DepthwiseConv(3, impl='winograd').init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))


def test_bfloat16_close_to_float32():
  x, w = _inputs((2, 8, 8, 8), 3)
  want = layers.depthwise_conv(x, w, 1, 'xla')
  for impl in FAST_IMPLS:
    got = layers.depthwise_conv(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), 1, impl)
    assert got.dtype == jnp.bfloat16
    err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want)) / jnp.max(jnp.abs(want)))
    assert err < 2e-2, (impl, err)


# ---- Dense convolutions: 'matmul' (im2col + dot) against lax.conv_general_dilated ----

@pytest.mark.parametrize('k,stride,padding,hw', [
    (1, 1, 'SAME', (8, 8)),            # pointwise: a plain dot
    (3, 2, 'SAME', (8, 8)),            # LCNet / EfficientNet stem (asymmetric SAME pad)
    (3, 2, 'SAME', (9, 7)),
    (3, 1, 'SAME', (6, 6)),
    (3, 2, ((1, 1), (1, 1)), (8, 8)),  # MobileNetV2 stem (torch's symmetric pad)
])
def test_conv_matmul_matches_xla_values_and_grads(k, stride, padding, hw):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2,) + hw + (5,), np.float32))
  w = jnp.asarray(rng.standard_normal((k, k, 5, 7), np.float32))
  results = {}
  for name, fn in (('xla', layers.conv_xla), ('matmul', layers.conv_matmul)):
    y, vjp = jax.vjp(lambda x, w: fn(x, w, stride, padding), x, w)
    ct = jnp.asarray(np.random.default_rng(2).standard_normal(y.shape, np.float32))
    results[name] = (y,) + vjp(ct)
  for what, got, want in zip(('y', 'dx', 'dkernel'), results['matmul'], results['xla']):
    _assert_close(got, want, f'k={k} s={stride} {padding} {hw}: {what}')


def test_conv_module_keeps_nn_conv_parameters():
  """Checkpoints and converted ImageNet weights do not depend on conv_impl."""
  x = jnp.ones((1, 8, 8, 3))
  ref = nn.Conv(4, (3, 3), (2, 2), use_bias=True).init(jax.random.PRNGKey(0), x)
  for impl in layers.CONV_IMPLS:
    v = layers.Conv(4, 3, 2, use_bias=True, impl=impl).init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, ref)
    y = layers.Conv(4, 3, 2, use_bias=True, impl=impl).apply(ref, x)
    np.testing.assert_allclose(y, nn.Conv(4, (3, 3), (2, 2)).apply(ref, x), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='conv impl must be one of'):
    layers.resolve_conv_impl('im2col')
  from models.native import ops as native
  # Tests run on the CPU backend.
  assert layers.resolve_conv_impl('auto') == ('native' if native.available() else 'matmul')

