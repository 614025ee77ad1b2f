"""PartialFC head (losses/partial_fc.py) on 8 faked CPU devices."""
import functools
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from configs import default
from losses import margin
from losses import partial_fc

MESH_SHAPES = [(8, 1), (4, 2), (2, 4), (1, 8)]


def make_mesh(shape):
  return jax.make_mesh(shape, ('data', 'model'), axis_types=(AxisType.Auto,) * 2)


def loss_config(kind, sample_rate=1.0, filtering=0.0, chunk=0):
  c = default.get_config()
  c.loss.margin = kind
  c.loss.m1, c.loss.m2, c.loss.m3 = {'cosface': (1.0, 0.0, 0.35), 'arcface': (1.0, 0.5, 0.0),
                                     'combined': (0.9, 0.4, 0.15)}[kind]
  c.loss.scale = 32.0
  c.loss.sample_rate = sample_rate
  c.loss.interclass_filtering_threshold = filtering
  c.loss.logit_chunk = chunk
  return c.loss


def random_problem(num_classes, dim, batch, padded, seed=0):
  rng = np.random.RandomState(seed)
  emb = jnp.asarray(rng.randn(batch, dim), jnp.float32)
  labels = jnp.asarray(rng.randint(0, num_classes, batch), jnp.int32)
  # Some embeddings close to their centre so that margins / filtering take both branches.
  centers = rng.randn(padded, dim).astype(np.float32)
  emb = emb.at[: batch // 2].set(jnp.asarray(centers[np.asarray(labels[: batch // 2])] * 3)
                                 + emb[: batch // 2])
  return emb, labels, jnp.asarray(centers)


# (margin, interclass filtering, logit_chunk): the last is the one before it with the logits in
# chunks of 2 rows per device (a scan with rematerialisation: same loss and gradients).
MARGINS = [('cosface', 0.0, 0), ('arcface', 0.0, 0), ('combined', 0.0, 0), ('cosface', 0.2, 0),
           ('cosface', 0.2, 2)]


@pytest.mark.parametrize('shape', MESH_SHAPES, ids=lambda s: f'mesh{s[0]}x{s[1]}')
def test_rate_one_matches_dense_reference(shape):
  """Loss and gradients w.r.t. embeddings and W equal dense_margin_loss, for every margin type.

  All margin types go into one jit per mesh shape (one compile instead of four).
  """
  num_classes, dim, batch = 37, 16, 16  # 37: padding rows on every mesh with > 1 model shard
  configs = [loss_config(kind, filtering=f, chunk=c) for kind, f, c in MARGINS]
  emb, labels, centers = random_problem(num_classes, dim, batch, padded=40)
  mesh = make_mesh(shape)
  w = centers[: partial_fc.padded_num_classes(num_classes, shape[1])]

  def losses_and_grads(loss_fn, emb, w):
    return [jax.value_and_grad(functools.partial(loss_fn, cfg=cfg), argnums=(0, 1))(emb, w)
            for cfg in configs]

  def dense(e, w, cfg):
    return margin.dense_margin_loss(e, labels, w, cfg, num_valid_classes=num_classes)[0]

  # Placed as train.py places them: batch over all devices, W by rows over 'model'; the head
  # finds the mesh from W's sharding (mesh=None).
  batch_sharding = NamedSharding(mesh, P(('data', 'model')))
  placed_labels = jax.device_put(labels, batch_sharding)

  def sharded(e, w, cfg):
    return partial_fc.partial_fc_loss(e, placed_labels, w, jax.random.key(0), cfg,
                                      num_classes=num_classes)[0]

  expected = jax.jit(losses_and_grads, static_argnums=0)(dense, emb, w)
  got = jax.jit(losses_and_grads, static_argnums=0)(
      sharded, jax.device_put(emb, batch_sharding),
      jax.device_put(w, NamedSharding(mesh, P('model', None))))
  for (kind, f, c), (ref_loss, (ref_ge, ref_gw)), (loss, (ge, gw)) in zip(MARGINS, expected, got):
    msg = f'{kind} filtering={f} chunk={c} mesh={shape}'
    assert float(jnp.abs(ref_gw).max()) > 1e-3, msg  # gradients are not trivially zero
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, err_msg=msg)
    np.testing.assert_allclose(ge, ref_ge, atol=2e-6, rtol=1e-4, err_msg=msg)
    np.testing.assert_allclose(gw, ref_gw, atol=2e-6, rtol=1e-4, err_msg=msg)
    assert not np.any(np.asarray(gw[num_classes:])), msg  # padding rows get no gradient
  with pytest.raises(ValueError, match='padded_num_classes'):
    partial_fc.partial_fc_loss(emb, labels, centers[:36], jax.random.key(0), configs[0],
                               num_classes=num_classes, mesh=mesh)
  # The four margin settings really differ (each branch of margin.py is exercised).
  assert len({round(float(loss), 4) for loss, _ in got[:4]}) == 4


def test_sampling_keeps_positives_and_draws_negatives_uniformly():
  num_classes, batch, steps = 203, 32, 400
  mesh = make_mesh((2, 4))
  shards = 4
  local = partial_fc.padded_num_classes(num_classes, shards) // shards  # 51, last shard: 1 pad
  num_samples = partial_fc.samples_per_shard(num_classes, shards, 0.75)
  labels = jnp.asarray(np.random.RandomState(1).randint(0, num_classes, batch), jnp.int32)
  sample = jax.jit(lambda r: partial_fc.sample_class_centers(
      r, labels, mesh=mesh, num_classes=num_classes, sample_rate=0.75))
  counts = np.zeros(shards * local)
  positives = set(np.asarray(labels).tolist())
  for step in range(steps):
    s = sample(jax.random.key(step))
    index = np.asarray(s.index).reshape(shards, num_samples)
    target = np.asarray(s.target)
    global_ids = index + np.arange(shards)[:, None] * local
    for shard in range(shards):
      assert len(set(index[shard])) == num_samples  # no duplicates
      assert positives.issubset(set(global_ids.ravel()))
    # target points at each example's class on its owning shard only.
    for b, y in enumerate(np.asarray(labels)):
      owner = y // local
      assert global_ids[owner, target[owner, b]] == y
      assert all(target[j, b] == -1 for j in range(shards) if j != owner)
    counts[global_ids.ravel()] += 1
  assert counts[num_classes:].sum() == 0  # the padding row is never a negative
  negatives = np.array([c for c in range(num_classes) if c not in positives])
  # Each shard keeps num_samples - (its positives) of its negatives, uniformly: compare every
  # negative's frequency with its shard's expected rate (binomial, 5 sigma).
  for shard in range(shards):
    ids = negatives[negatives // local == shard]
    pos_here = sum(1 for y in positives if y // local == shard)
    p = (num_samples - pos_here) / len(ids)
    sigma = np.sqrt(steps * p * (1 - p))
    assert np.all(np.abs(counts[ids] - steps * p) < 5 * sigma), (shard, counts[ids], steps * p)
    assert np.std(counts[ids]) > 0  # actually random


def test_sparse_adamw_matches_optax_on_sampled_rows_and_leaves_others():
  num_classes, dim, batch = 120, 8, 16
  mesh = make_mesh((2, 4))
  cfg = loss_config('arcface', sample_rate=0.6)
  emb, labels, _ = random_problem(num_classes, dim, batch, padded=120)
  centers = partial_fc.init_centers(jax.random.key(1), num_classes, dim, mesh, stddev=0.1)
  moments = partial_fc.init_adam_moments(centers)
  assert centers.sharding.spec == P('model', None) and moments['nu'].sharding.spec == P('model', None)
  opt = dict(b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0)

  @jax.jit
  def step(centers, moments, rng, t):
    sample = partial_fc.sample_class_centers(rng, labels, mesh=mesh, num_classes=num_classes,
                                             sample_rate=cfg.sample_rate)
    rows = partial_fc.gather_centers(centers, sample.index, mesh=mesh)
    loss_fn = lambda r: partial_fc.margin_softmax_loss(emb, r, sample, cfg, mesh=mesh,
                                                       num_classes=num_classes)[0]
    grads = jax.grad(loss_fn)(rows)
    new_c, new_m = partial_fc.sparse_adamw_update(centers, moments, sample.index, grads, step=t,
                                                  learning_rate=0.01, mesh=mesh, **opt)
    return new_c, new_m, sample.index, rows, grads

  c1, m1, index1, rows, grads = step(centers, moments, jax.random.key(0), 1)
  # Same update as optax.adamw applied to the sampled rows alone.
  tx = optax.adamw(0.01, **opt)
  updates, _ = tx.update(grads, tx.init(rows), rows)
  expected_rows = optax.apply_updates(rows, updates)
  local = 120 // 4
  ids = (np.asarray(index1).reshape(4, -1) + np.arange(4)[:, None] * local).ravel()
  np.testing.assert_allclose(np.asarray(c1)[ids], expected_rows, rtol=1e-5, atol=1e-7)
  # A second step with another sample: rows sampled in neither step keep their initial values,
  # rows sampled only in step 1 keep their step-1 values, in W and in both moments.
  c2, m2, index2, _, _ = step(c1, m1, jax.random.key(5), 2)
  ids2 = (np.asarray(index2).reshape(4, -1) + np.arange(4)[:, None] * local).ravel()
  untouched = np.setdiff1d(np.arange(num_classes), ids2)
  assert 0 < len(untouched) < num_classes
  for before, after in [(c1, c2), (m1['mu'], m2['mu']), (m1['nu'], m2['nu'])]:
    np.testing.assert_array_equal(np.asarray(after)[untouched], np.asarray(before)[untouched])
    assert np.all(np.any(np.asarray(after)[ids2] != np.asarray(before)[ids2], axis=1))
  assert c2.sharding.spec == P('model', None)


def test_validate_config_refuses_too_small_sample():
  c = default.get_config()
  c.batch_size = 256
  c.loss.sample_rate = 0.1
  partial_fc.validate_partial_fc_config(c, num_classes=100_000, num_shards=8)  # 1250 >= 256
  with pytest.raises(ValueError, match=r'config\.loss\.sample_rate=0\.1 keeps 125 of 1250'):
    partial_fc.validate_partial_fc_config(c, num_classes=10_000, num_shards=8)
  c.loss.sample_rate = 1.5
  with pytest.raises(ValueError, match='must be in'):
    partial_fc.validate_partial_fc_config(c, num_classes=10_000, num_shards=8)
  # The head refuses too (at trace time), rather than silently dropping positives.
  with pytest.raises(ValueError, match=r'config\.loss\.sample_rate=0\.1 keeps 2 of 13'):
    partial_fc.sample_class_centers(jax.random.key(0), jnp.zeros(16, jnp.int32), num_classes=100,
                                    sample_rate=0.1, mesh=make_mesh((1, 8)))


def test_orbax_restores_sharded_centers_onto_another_mesh(tmp_path):
  num_classes, dim = 1001, 8
  mesh8 = make_mesh((1, 8))
  centers = partial_fc.init_centers(jax.random.key(0), num_classes, dim, mesh8)
  state = {'centers': centers, 'moments': partial_fc.init_adam_moments(centers)}
  state['moments']['mu'] = jax.jit(lambda x: x + 1.0)(state['moments']['mu'])
  # Each device holds only its block: never the whole matrix.
  assert {s.data.shape for s in centers.addressable_shards} == {(1008 // 8, dim)}
  with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
    mngr.save(0, args=ocp.args.StandardSave(state))
    mngr.wait_until_finished()

  mesh4 = make_mesh((2, 4))  # 4 model shards, replicated over 2 data rows
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=NamedSharding(mesh4, P('model', None))), state)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
    restored = mngr.restore(0, args=ocp.args.StandardRestore(target))
  for key in ['centers']:
    assert restored[key].sharding.spec == P('model', None)
    assert {s.data.shape for s in restored[key].addressable_shards} == {(1008 // 4, dim)}
  jax.tree.map(np.testing.assert_array_equal, restored, state)
