"""One JAX process of the multi-host PartialFC test (tests/test_partial_fc_multihost.py).

python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT [head|eval]
joins a localhost coordinator with 4 faked CPU devices, runs one PartialFC train step of the head
(head) or the in-training evaluator's embedding of an eval set (eval) on a ('data', 'model') =
(2, 4) mesh over all processes' devices, and prints one JSON line. `head_step` and
`eval_embeddings` are also what the test runs in a single 8-device process for the reference.
"""
import json
import os
import sys

if __name__ == '__main__':
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

NUM_CLASSES, DIM, BATCH = 1000, 16, 32


def head_step(mesh):
  """Loss, gradient norms and updated-W checksum of one sparse PartialFC step (rate 0.25)."""
  from configs import default
  from losses import partial_fc
  cfg = default.get_config().loss
  cfg.margin, cfg.m2, cfg.m3, cfg.sample_rate = 'arcface', 0.5, 0.0, 0.25
  rng = np.random.RandomState(0)  # the same numbers on every process
  emb = rng.randn(BATCH, DIM).astype(np.float32)
  labels = rng.randint(0, NUM_CLASSES, BATCH).astype(np.int32)

  def put(x, spec):  # global array from the (identical) host copy: each process its own blocks
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda i: x[i])

  emb, labels = put(emb, P('data', None)), put(labels, P('data'))
  centers = partial_fc.init_centers(jax.random.key(1), NUM_CLASSES, DIM, mesh, stddev=0.1)
  moments = partial_fc.init_adam_moments(centers)

  @jax.jit
  def step(emb, labels, centers, moments):
    sample = partial_fc.sample_class_centers(jax.random.key(2), labels, mesh=mesh,
                                             num_classes=NUM_CLASSES, sample_rate=cfg.sample_rate)
    rows = partial_fc.gather_centers(centers, sample.index, mesh=mesh)
    loss_fn = lambda e, r: partial_fc.margin_softmax_loss(e, r, sample, cfg, mesh=mesh,
                                                          num_classes=NUM_CLASSES)[0]
    loss, (g_emb, g_rows) = jax.value_and_grad(loss_fn, argnums=(0, 1))(emb, rows)
    centers, moments = partial_fc.sparse_adamw_update(
        centers, moments, sample.index, g_rows, step=1, learning_rate=0.01, mesh=mesh)
    return {'loss': loss, 'grad_emb_norm': jnp.linalg.norm(g_emb),
            'grad_rows_norm': jnp.linalg.norm(g_rows),
            'centers_sum': jnp.sum(centers), 'centers_abs_sum': jnp.sum(jnp.abs(centers)),
            'nu_sum': jnp.sum(moments['nu'])}

  out = step(emb, labels, centers, moments)
  # Replicated scalars: every device holds the whole value.
  return {k: float(v.addressable_data(0)) for k, v in out.items()}


def eval_embeddings(mesh):
  """The evaluator's embeddings (evaluation/evaluators.py make_embed_fn) of 20 images, batches
  of 8 over the mesh (the last one padded): every process holds the whole set, embeds its share
  and reads all of the embeddings back. The network is one Dense layer over the pixels (what is
  tested is how the batches are placed and gathered; a conv net's compile costs ~10 s here).
  -> {'embeddings': [20][16] floats}."""
  import flax.linen as nn
  from evaluation import evaluators

  class Pixels(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(16)(x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0)

  model = Pixels()
  images = np.random.RandomState(3).randint(0, 256, (20, 8, 8, 3)).astype(np.uint8)
  kernel = np.random.RandomState(4).normal(0, 0.1, (8 * 8 * 3, 16)).astype(np.float32)
  replicated = NamedSharding(mesh, P())  # the same numbers on every process
  variables = {'params': {'Dense_0': {'kernel': jax.device_put(kernel, replicated),
                                      'bias': jax.device_put(np.zeros(16, np.float32),
                                                             replicated)}}}
  # The batch over every device, as train.BATCH_AXES places it.
  embed = evaluators.make_embed_fn(model, mesh, NamedSharding(mesh, P(('data', 'model'))))
  return {'embeddings': embed(variables, images, 8).tolist()}


def main():
  process_id, num_processes, port = (int(a) for a in sys.argv[1:4])
  mode = sys.argv[4] if len(sys.argv) > 4 else 'head'

  jax.distributed.initialize(coordinator_address=f'localhost:{port}',
                             num_processes=num_processes, process_id=process_id)
  assert jax.device_count() == 4 * num_processes and jax.local_device_count() == 4
  mesh = jax.make_mesh((2, 4), ('data', 'model'), axis_types=(AxisType.Auto,) * 2)
  result = head_step(mesh) if mode == 'head' else eval_embeddings(mesh)
  result['process_id'] = process_id
  print(json.dumps(result), flush=True)
  jax.distributed.shutdown()


if __name__ == '__main__':
  main()
