"""PartialFC: the margin-softmax head with its class-centre matrix sharded over the mesh axis 'model'.

W [num_classes_padded, dim] lives as `num_shards` row blocks, one per 'model' index (replicated over
'data'), and is never gathered whole. One step:

  1. `sample_class_centers`: each shard keeps every class centre that is a positive of the global
     batch and fills up to a static count with uniformly drawn negatives (insightface's PartialFC v2:
     positives get score 2, others U[0, 1), top-k). `target` says, per shard and example, where the
     example's class sits among that shard's samples (-1: owned by another shard).
  2. `gather_centers`: each shard takes its sampled rows (local gather, no communication).
  3. `margin_softmax_loss`: every device computes the cosines of its 'data' block of the batch
     against its shard's sampled rows; the row max and the sum of exponentials are reduced over
     'model'; the target logit (with the margin of losses/margin.py) exists only on the owning shard
     and is psum-ed. Gradients w.r.t. the rows are summed over 'data' by shard_map's transpose.
  4. `sparse_adamw_update`: AdamW on the sampled rows only, scattered back into W and its moments.
     Unsampled rows and their moments are untouched (lazy Adam; weight decay also only on the rows
     that were used). Measured against a dense optax update in benchmarks/partial_fc.py.

At sample rate 1.0 sampling is skipped (every row is used) and the loss equals
losses.margin.dense_margin_loss. Padding rows (classes >= num_classes) are never sampled as
negatives and their logits are masked.
"""
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from losses import margin

# Logit given to padding classes: exp() underflows to 0, and unlike -inf it keeps gradients finite.
_MASKED_LOGIT = -1e30


# ---------------------------------------------------------------------------------------------
# Static sizes and config validation.
# ---------------------------------------------------------------------------------------------

def padded_num_classes(num_classes, num_shards):
  """Class count rounded up to a multiple of the 'model' axis size (equal row blocks)."""
  return -(-num_classes // num_shards) * num_shards


def samples_per_shard(num_classes, num_shards, sample_rate):
  """Static number of centres each shard keeps per step (all of its rows at rate 1.0)."""
  local = padded_num_classes(num_classes, num_shards) // num_shards
  return min(local, max(1, int(math.ceil(sample_rate * local))))


def validate_partial_fc_config(config, num_classes, num_shards, num_data_shards=1):
  """Refuses a sample count that cannot hold every positive of a global batch, and a logit
  chunk that does not divide each device's share of the batch.

  In the worst case all labels of the global batch live on one shard, so each shard must keep
  min(batch_size, classes_per_shard) centres. Raises ValueError with a one-line message.
  """
  check_sample_size(float(config.loss.sample_rate), int(config.batch_size), num_classes,
                    num_shards)
  chunk = int(config.loss.get('logit_chunk', 0) or 0)
  per_device = int(config.batch_size) // max(1, num_data_shards)
  if chunk < 0 or (0 < chunk < per_device and per_device % chunk):
    raise ValueError(f'config.loss.logit_chunk={chunk} must be 0 or divide the per-device batch '
                     f'{per_device} (batch_size {config.batch_size} over {num_data_shards} '
                     f"'data' shards)")


def check_sample_size(sample_rate, batch_size, num_classes, num_shards):
  """validate_partial_fc_config on plain values; also run at trace time by the head itself."""
  if not 0.0 < sample_rate <= 1.0:
    raise ValueError(f'config.loss.sample_rate={sample_rate} must be in (0, 1]')
  local = padded_num_classes(num_classes, num_shards) // num_shards
  needed = min(batch_size, local)
  have = samples_per_shard(num_classes, num_shards, sample_rate)
  if have < needed:
    raise ValueError(
        f'config.loss.sample_rate={sample_rate} keeps {have} of {local} class centres per shard, '
        f'fewer than the {needed} positives a global batch of {batch_size} can put on one shard; '
        f'use sample_rate >= {needed / local:.4g}, fewer model shards or a smaller batch_size')


def mesh_of(x):
  """The (abstract) mesh x is sharded over, for callers that do not pass one (train.py's jit)."""
  mesh = getattr(getattr(jax.typeof(x), 'sharding', None), 'mesh', None)
  if mesh is None or 'model' not in mesh.shape:
    raise ValueError('PartialFC needs W placed on a (data, model) mesh: pass mesh= or jit with '
                     'in_shardings on such a mesh')
  return mesh


def _constrain(x, mesh, spec):
  """Puts x on the layout shard_map expects (a no-op when the caller already placed it so)."""
  if all(t == AxisType.Explicit for t in mesh.axis_types):  # sharding-in-types meshes
    return jax.reshard(x, NamedSharding(mesh, spec))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


# ---------------------------------------------------------------------------------------------
# Parameters and optimizer state, created sharded.
# ---------------------------------------------------------------------------------------------

def centers_sharding(mesh):
  return NamedSharding(mesh, P('model', None))


def init_centers(rng, num_classes, dim, mesh, stddev=0.01):
  """W [padded classes, dim] ~ N(0, stddev), each device materialising only its own block."""
  shape = (padded_num_classes(num_classes, mesh.shape['model']), dim)
  init = jax.jit(lambda r: stddev * jax.random.normal(r, shape, jnp.float32),
                 out_shardings=centers_sharding(mesh))
  return init(rng)


def init_adam_moments(centers):
  """{'mu', 'nu'}: AdamW moments for W, same shape and sharding as W."""
  zeros = jax.jit(jnp.zeros_like, out_shardings=centers.sharding)
  return {'mu': zeros(centers), 'nu': zeros(centers)}


# ---------------------------------------------------------------------------------------------
# 1. Sampling.
# ---------------------------------------------------------------------------------------------

class Sample(NamedTuple):
  index: jax.Array   # [num_shards * S] int32, P('model'): sampled local row ids, sorted per shard
  target: jax.Array  # [num_shards, B] int32, P('model', 'data'): position in the shard's sample


def _sample_one_shard(rng, labels, local_labels, shard, classes_per_shard, num_samples,
                      num_classes):
  """Indices of this shard's kept rows and the position of each local example's class in them."""
  first = shard * classes_per_shard
  rows = jnp.arange(classes_per_shard)
  if num_samples == classes_per_shard:  # rate 1.0: keep everything, no top-k
    index = rows
    inverse = rows
  else:
    local = labels - first
    owned = (local >= 0) & (local < classes_per_shard)
    positive = jnp.zeros(classes_per_shard, bool).at[jnp.where(owned, local, classes_per_shard)].set(
        True, mode='drop')
    score = jax.random.uniform(jax.random.fold_in(rng, shard), (classes_per_shard,))
    score = jnp.where(first + rows < num_classes, score, -1.0)  # padding only if nothing else left
    score = jnp.where(positive, 2.0, score)
    _, index = jax.lax.top_k(score, num_samples)
    index = jnp.sort(index)  # ordered rows: contiguous-ish gathers and scatters
    inverse = jnp.full(classes_per_shard, -1, jnp.int32).at[index].set(
        jnp.arange(num_samples, dtype=jnp.int32), unique_indices=True)
  local = local_labels - first
  owned = (local >= 0) & (local < classes_per_shard)
  target = jnp.where(owned, inverse[jnp.clip(local, 0, classes_per_shard - 1)], -1)
  return index.astype(jnp.int32), target.astype(jnp.int32)


def sample_class_centers(rng, labels, *, num_classes, sample_rate, mesh=None):
  """Per-shard sampling of class centres; labels [B] int sharded P('data') (or replicated).

  The same rng on every device: all 'data' replicas of a shard pick the same rows.
  """
  mesh = mesh_of(labels) if mesh is None else mesh
  num_shards = mesh.shape['model']
  local_rows = padded_num_classes(num_classes, num_shards) // num_shards
  num_samples = samples_per_shard(num_classes, num_shards, sample_rate)
  # A positive that did not fit would silently lose its target logit: refuse at trace time.
  check_sample_size(sample_rate, labels.shape[0], num_classes, num_shards)

  def per_device(rng, local_labels):
    shard = jax.lax.axis_index('model')
    all_labels = jax.lax.all_gather(local_labels, 'data', tiled=True)
    index, target = _sample_one_shard(rng, all_labels, local_labels, shard, local_rows,
                                      num_samples, num_classes)
    return index, target[None]

  f = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P('data')),
                    out_specs=(P('model'), P('model', 'data')), check_vma=False)
  index, target = f(rng, _constrain(labels.astype(jnp.int32), mesh, P('data')))
  return Sample(index, target)


# ---------------------------------------------------------------------------------------------
# 2. Gathering the sampled rows (differentiable: its transpose scatters into W).
# ---------------------------------------------------------------------------------------------

def gather_centers(centers, index, *, mesh=None):
  """[num_shards * S, dim] P('model', None): each shard's sampled rows of its own block of W."""
  mesh = mesh_of(centers) if mesh is None else mesh
  f = jax.shard_map(lambda w, i: jnp.take(w, i, axis=0, indices_are_sorted=True,
                                          unique_indices=True, mode='clip'),
                    mesh=mesh, in_specs=(P('model', None), P('model')),
                    out_specs=P('model', None))
  return f(_constrain(centers, mesh, P('model', None)), _constrain(index, mesh, P('model')))


# ---------------------------------------------------------------------------------------------
# 3. Distributed margin softmax.
# ---------------------------------------------------------------------------------------------

def margin_softmax_loss(embeddings, rows, sample, loss_config, *, num_classes, mesh=None):
  """Mean margin-softmax loss over the global batch, and metrics.

  embeddings: [B, D] P('data') (un-normalised); rows: [num_shards * S, D] P('model', None) from
  gather_centers; sample: from sample_class_centers. At rate 1.0 this is dense_margin_loss.
  """
  mesh = mesh_of(rows) if mesh is None else mesh
  num_shards = mesh.shape['model']
  local_rows = padded_num_classes(num_classes, num_shards) // num_shards
  full = rows.shape[0] // num_shards == local_rows  # rate 1.0: row j of the sample is class j

  def block(emb, w, index, target):
    """Per-example loss, target cosine and best other cosine for `emb`'s rows."""
    shard = jax.lax.axis_index('model')
    cos = margin.l2_normalize(emb) @ margin.l2_normalize(w).T  # [b, S]
    has_target = target >= 0
    columns = jnp.arange(cos.shape[1])
    is_target = columns[None, :] == target[:, None]
    target_cos = jnp.take_along_axis(cos, jnp.maximum(target, 0)[:, None], axis=1)[:, 0]
    # Margin only on the b target cosines (not the whole block: arccos is costly); negatives get
    # margin_logits with no target, i.e. s * cos after the optional interclass filtering.
    logits = margin.margin_logits(cos, jnp.zeros((), bool), loss_config)
    target_logit = margin.margin_logits(target_cos[:, None], jnp.ones((), bool), loss_config)[:, 0]
    logits = jnp.where(is_target, target_logit[:, None], logits)
    class_id = shard * local_rows + (columns if full else index)
    logits = jnp.where(class_id[None, :] < num_classes, logits, _MASKED_LOGIT)

    # The max only stabilises exp(); no gradient through it.
    row_max = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(logits, axis=1)), 'model')
    sum_exp = jax.lax.psum(jnp.sum(jnp.exp(logits - row_max[:, None]), axis=1), 'model')
    target_logit = jax.lax.psum(jnp.where(has_target, target_logit, 0.0), 'model')
    loss = jnp.log(sum_exp) + row_max - target_logit
    # Metrics over the sampled classes (exact at rate 1.0).
    best_other = jax.lax.pmax(
        jax.lax.stop_gradient(jnp.max(jnp.where(is_target, -2.0, cos), axis=1)), 'model')
    plain_target_cos = jax.lax.psum(jnp.where(has_target, target_cos, 0.0), 'model')
    return loss, jax.lax.stop_gradient(plain_target_cos), best_other

  def per_device(emb, w, index, target):
    target = target[0]
    b = emb.shape[0]
    chunk = int(loss_config.get('logit_chunk', 0) or 0)
    if 0 < chunk < b:
      # The [b, S] logits in row chunks: a scan over chunks whose body is rematerialised, so the
      # backward pass recomputes one chunk's logits at a time instead of keeping all of them
      # (at 29M classes x rate 0.3 on 64 chips they are 4.5 GB per copy; README, PartialFC).
      if b % chunk:
        raise ValueError(f'config.loss.logit_chunk={chunk} must divide the per-device batch {b}')
      body = jax.checkpoint(lambda xs: block(xs[0], w, index, xs[1]))
      loss, target_cos, best_other = jax.lax.map(
          body, (emb.reshape(b // chunk, chunk, -1), target.reshape(b // chunk, chunk)))
      loss, target_cos, best_other = (x.reshape(b) for x in (loss, target_cos, best_other))
    else:
      loss, target_cos, best_other = block(emb, w, index, target)
    metrics = {
        'accuracy': jax.lax.pmean(jnp.mean(target_cos >= best_other), 'data'),
        'target_cos': jax.lax.pmean(jnp.mean(target_cos), 'data'),
    }
    return jax.lax.pmean(jnp.mean(loss), 'data'), jax.lax.stop_gradient(metrics)

  f = jax.shard_map(per_device, mesh=mesh,
                    in_specs=(P('data', None), P('model', None), P('model'), P('model', 'data')),
                    out_specs=(P(), P()))
  return f(_constrain(embeddings.astype(jnp.float32), mesh, P('data', None)),
           _constrain(rows, mesh, P('model', None)), sample.index, sample.target)


def partial_fc_loss(embeddings, labels, centers, rng, loss_config, *, num_classes, mesh=None):
  """Sample + gather + loss in one call; differentiable w.r.t. embeddings and (dense) centers.

  mesh: defaults to the mesh `centers` is sharded over (inside a jit with in_shardings).
  """
  mesh = mesh_of(centers) if mesh is None else mesh
  expected = padded_num_classes(num_classes, mesh.shape['model'])
  if centers.shape[0] != expected:
    raise ValueError(f'class centres have {centers.shape[0]} rows; {num_classes} classes on '
                     f"{mesh.shape['model']} model shards need {expected} (padded_num_classes)")
  sample = sample_class_centers(rng, labels, mesh=mesh, num_classes=num_classes,
                                sample_rate=loss_config.sample_rate)
  rows = gather_centers(centers, sample.index, mesh=mesh)
  return margin_softmax_loss(embeddings, rows, sample, loss_config, mesh=mesh,
                             num_classes=num_classes)


# ---------------------------------------------------------------------------------------------
# 4. Sparse AdamW on the sampled rows.
# ---------------------------------------------------------------------------------------------

def sparse_adamw_update(centers, moments, index, row_grads, *, step, learning_rate, mesh=None,
                        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, apply=True):
  """AdamW on the sampled rows of W only; returns (new centers, new moments).

  row_grads: d loss / d rows [num_shards * S, D] P('model', None), already summed over 'data'.
  step: 1-based update count for bias correction (the global step, as in lazy Adam).
  apply: scalar bool; False writes the rows back unchanged (a skipped step), without touching
  the rest of W as a whole-matrix select would.
  Donate centers and moments to the enclosing jit so the scatters happen in place.
  """
  mesh = mesh_of(centers) if mesh is None else mesh
  step = jnp.asarray(step, jnp.float32)
  lr = jnp.asarray(learning_rate, jnp.float32)
  apply = jnp.asarray(apply, bool)

  def per_shard(w, mu, nu, i, g, apply):
    take = functools.partial(jnp.take, indices=i, axis=0, indices_are_sorted=True,
                             unique_indices=True, mode='clip')
    w_i, mu_i, nu_i = take(w), take(mu), take(nu)
    mu_i = b1 * mu_i + (1.0 - b1) * g
    nu_i = b2 * nu_i + (1.0 - b2) * g * g
    mu_hat = mu_i / (1.0 - b1 ** step)
    nu_hat = nu_i / (1.0 - b2 ** step)
    new_w_i = w_i - lr * (mu_hat / (jnp.sqrt(nu_hat) + eps) + weight_decay * w_i)
    put = lambda a, new, old: a.at[i].set(jnp.where(apply, new, old), indices_are_sorted=True,
                                          unique_indices=True, mode='drop')
    return put(w, new_w_i, w_i), put(mu, mu_i, take(mu)), put(nu, nu_i, take(nu))

  spec = P('model', None)
  f = jax.shard_map(per_shard, mesh=mesh, in_specs=(spec, spec, spec, P('model'), spec, P()),
                    out_specs=(spec, spec, spec), check_vma=False)
  w, mu, nu = f(centers, moments['mu'], moments['nu'], index,
                _constrain(row_grads, mesh, spec), apply)
  return w, {'mu': mu, 'nu': nu}
