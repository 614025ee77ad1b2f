"""PartialFC in the real train step: the row-sparse update of W (loss.center_update='sparse')."""
import functools

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import train
from losses import partial_fc
from models.embedder import build_model

NUM_CLASSES = 199  # padded to 200 rows: 100 per model shard


def _run_steps(config, num_steps, seed=0):
  """num_steps of train.jit_train_step on the config's mesh; returns host copies of the state
  before and after each step (the step donates its input state)."""
  mesh = train.create_mesh(config)
  model = build_model(config.model)
  lr_fn = train.create_learning_rate_fn(config)
  tx = train.create_optimizer(config, lr_fn)
  rng = jax.random.PRNGKey(seed)
  state, shardings = train.create_train_state(config, model, tx, rng, NUM_CLASSES, mesh)
  batch_sharding = NamedSharding(mesh, P(train.BATCH_AXES))
  step = train.jit_train_step(config, model, tx, lr_fn, NUM_CLASSES, mesh, shardings)
  data = np.random.default_rng(seed)
  states = [jax.device_get(state)]
  for _ in range(num_steps):
    batch = {'image': data.integers(0, 256, (config.batch_size, 32, 32, 3), np.uint8),
             'label': data.integers(0, NUM_CLASSES, (config.batch_size,)).astype(np.int32)}
    state, metrics = step(state, train.global_batch(batch, batch_sharding), rng, None)
    assert np.isfinite(float(metrics['loss']))
    states.append(jax.device_get(state))
  return states, shardings


def _config(tiny_config, **overrides):
  base = {'mesh.data': 4, 'mesh.model': 2, 'loss.partial_fc': True,
          'optimizer.warmup_steps': 0, 'optimizer.learning_rate': 1e-2}
  base.update(overrides)
  return tiny_config(**base)


def test_sparse_update_at_rate_one_equals_dense_optax(tiny_config):
  """Every row is sampled at rate 1.0, so lazy AdamW is AdamW: both paths give the same params.

  grad_clip_norm is small enough to clip, so the joint clipping is checked too. Adam divides by
  sqrt(nu) + 1e-8, so an entry whose gradient is near 0 takes a step of up to lr in a direction
  set by float32 rounding (scatter-add vs row gradient): the check is that all but a few entries
  agree to 1% of one step. head='ln' because LayerNorm -> BatchNorm gives the LN bias an exactly
  zero gradient, i.e. pure rounding noise in every entry.
  """
  lr = 1e-2
  results = {}
  for update in ('sparse', 'dense'):
    c = _config(tiny_config, **{'loss.center_update': update, 'loss.sample_rate': 1.0,
                                'optimizer.grad_clip_norm': 0.5, 'model.head': 'ln',
                                'optimizer.learning_rate': lr})
    states, _ = _run_steps(c, 3)
    results[update] = jax.device_get(states[-1].params)
  flat_s = jax.tree_util.tree_leaves_with_path(results['sparse'])
  flat_d = dict(jax.tree_util.tree_leaves_with_path(results['dense']))
  assert len(flat_s) == len(flat_d)
  off = total = 0
  for path, got in flat_s:
    differs = np.abs(got - flat_d[path]) > 0.01 * lr
    off, total = off + differs.sum(), total + differs.size
    assert differs.mean() <= 0.01, (jax.tree_util.keystr(path), differs.mean())
  assert off <= 1e-3 * total, (off, total)


def test_sparse_update_touches_only_sampled_rows(tiny_config):
  c = _config(tiny_config, **{'loss.sample_rate': 0.3, 'optimizer.weight_decay': 0.0})
  states, shardings = _run_steps(c, 1)
  before, after = states
  # W and its moments stay split over 'model' (never replicated) in the state.
  assert shardings.params['head']['centers'].spec == P('model', None)
  assert shardings.opt_state['centers']['mu'].spec == P('model', None)
  assert not any('centers' in jax.tree_util.keystr(path)  # optax never sees W
                 for path, _ in jax.tree_util.tree_leaves_with_path(after.opt_state['tx']))
  w0, w1 = np.asarray(before.params['head']['centers']), np.asarray(after.params['head']['centers'])
  mu = np.asarray(after.opt_state['centers']['mu'])
  nu = np.asarray(after.opt_state['centers']['nu'])
  changed = np.any(w0 != w1, axis=1)
  # Exactly the rows whose moments were written changed: each shard's 30 sampled rows.
  np.testing.assert_array_equal(changed, np.any(nu != 0, axis=1))
  np.testing.assert_array_equal(np.any(mu != 0, axis=1), changed)
  per_shard = partial_fc.samples_per_shard(NUM_CLASSES, 2, 0.3)
  assert per_shard == 30
  for shard in range(2):
    assert changed[shard * 100:(shard + 1) * 100].sum() == per_shard
  assert not changed[199]  # the padding row is never sampled while real rows are left


def test_unknown_center_update_is_a_config_error(tiny_config):
  from configs.validate import ConfigError, validate_config
  with pytest.raises(ConfigError, match='config.loss.center_update'):
    validate_config(_config(tiny_config, **{'loss.center_update': 'lazy'}), num_devices=8)


def test_skipped_step_leaves_w_and_moments_untouched():
  """apply=False (a non-finite step in train.py) writes the sampled rows back unchanged."""
  mesh = jax.make_mesh((4, 2), ('data', 'model'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  w = partial_fc.init_centers(jax.random.PRNGKey(0), 64, 8, mesh)
  moments = partial_fc.init_adam_moments(w)
  moments = {k: v + 0.5 for k, v in moments.items()}
  index = jax.device_put(np.array([1, 5, 7, 9, 0, 3, 4, 30], np.int32),
                         NamedSharding(mesh, P('model')))
  grads = jax.device_put(np.full((8, 8), np.nan, np.float32),
                         NamedSharding(mesh, P('model', None)))
  for apply, same in ((False, True), (True, False)):
    new_w, new_m = jax.jit(functools.partial(partial_fc.sparse_adamw_update, step=1,
                                             learning_rate=0.1, apply=apply))(
                                                 w, moments, index, grads)
    assert np.array_equal(np.asarray(new_w), np.asarray(w)) == same
    assert np.array_equal(np.asarray(new_m['mu']), np.asarray(moments['mu'])) == same
