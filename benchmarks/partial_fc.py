"""PartialFC head benchmark: step time and memory, JAX (8 faked CPU devices) vs PyTorch reference.

  python benchmarks/partial_fc.py                       # the table: sizes x sample rates
  python benchmarks/partial_fc.py --classes 100000 --rates 0.1 --updates sparse,dense
  python benchmarks/partial_fc.py --probe               # largest class count for this machine
  python benchmarks/partial_fc.py --pod --batch 8192    # AOT: 64 devices, 29M classes, dim 512
  python benchmarks/partial_fc.py --pod_train_step --batch 8192 --rates 0.1,0.3   # whole train.py step
  python benchmarks/partial_fc.py --pod_train_step --batch 8192 --rates 0.3 --logit_chunks 0,1024
  python benchmarks/partial_fc.py --classes 1281167 --rates 0.3 --no-torch --logit_chunks 0,128
  # the production recipe's head on a 32-chip slice, W whole on every chip vs split:
  python benchmarks/partial_fc.py --pod_train_step --pod_classes 1281817 --pod_dim 256 --batch 1024 \
      --rates 0.3 --devices 32 --meshes 32x1,8x4,1x32
  python benchmarks/partial_fc.py --classes 1281817 --rates 0.3 --no-torch --meshes 8x1,2x4,1x8

One JSON line per measurement. Every case runs in its own subprocess (peak RSS is per case, a
case that runs out of memory does not kill the run). Step = sampling + forward + backward (grads
for embeddings and W) + AdamW update of W, global batch 1024, dim 256, CosFace.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30


def _setup_jax(num_devices):
  os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_devices}'
  sys.path.insert(0, ROOT)


# ---------------------------------------------------------------------------------------------
# JAX head step.
# ---------------------------------------------------------------------------------------------

def head_config(sample_rate, batch_size, chunk=0):
  from configs import default
  c = default.get_config()
  c.batch_size = batch_size
  c.loss.margin = 'cosface'
  c.loss.sample_rate = sample_rate
  c.loss.logit_chunk = chunk
  return c


def model_shards_for(config, num_classes, max_shards):
  """Most 'model' shards (power of 2) for which the sample holds a whole batch's positives."""
  from losses import partial_fc
  shards = max_shards
  while shards >= 1:
    try:
      partial_fc.validate_partial_fc_config(config, num_classes, shards)
      return shards
    except ValueError as e:
      error = str(e)
      shards //= 2
  raise ValueError(error)


def make_head_step(config, mesh, num_classes, update):
  """jit(step)(state, embeddings, labels, rng) -> (state, loss); state = {'centers', 'opt'}."""
  import jax
  import optax
  from losses import partial_fc
  opt = config.optimizer
  lr = opt.learning_rate

  def step(state, embeddings, labels, rng):
    sample = partial_fc.sample_class_centers(rng, labels, mesh=mesh, num_classes=num_classes,
                                             sample_rate=config.loss.sample_rate)

    def loss_fn(e, w):
      rows = partial_fc.gather_centers(w, sample.index, mesh=mesh) if update == 'dense' else w
      return partial_fc.margin_softmax_loss(e, rows, sample, config.loss, mesh=mesh,
                                            num_classes=num_classes)[0]

    if update == 'sparse':  # differentiate w.r.t. the sampled rows, scatter the AdamW update
      rows = partial_fc.gather_centers(state['centers'], sample.index, mesh=mesh)
      loss, (_, g_rows) = jax.value_and_grad(loss_fn, argnums=(0, 1))(embeddings, rows)
      centers, moments = partial_fc.sparse_adamw_update(
          state['centers'], state['opt'], sample.index, g_rows, step=1, learning_rate=lr,
          mesh=mesh, b1=opt.b1, b2=opt.b2, weight_decay=0.0)
      return {'centers': centers, 'opt': moments}, loss
    # dense: gradient of the whole W (the gather's transpose), optax AdamW on all rows.
    loss, (_, g_w) = jax.value_and_grad(loss_fn, argnums=(0, 1))(embeddings, state['centers'])
    tx = optax.adamw(lr, b1=opt.b1, b2=opt.b2, weight_decay=0.0)
    updates, opt_state = tx.update(g_w, state['opt'], state['centers'])
    return {'centers': optax.apply_updates(state['centers'], updates), 'opt': opt_state}, loss

  return jax.jit(step, donate_argnums=0)


def init_state(config, mesh, num_classes, dim, update):
  import jax
  import optax
  from losses import partial_fc
  centers = partial_fc.init_centers(jax.random.key(0), num_classes, dim, mesh)
  if update == 'sparse':
    return {'centers': centers, 'opt': partial_fc.init_adam_moments(centers)}
  tx = optax.adamw(config.optimizer.learning_rate)
  return {'centers': centers, 'opt': jax.jit(tx.init)(centers)}


def abstract_state(config, mesh, num_classes, dim, update):
  """init_state's shapes without allocating, W-sized leaves sharded by rows over 'model'."""
  import jax
  import jax.numpy as jnp
  import optax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from losses import partial_fc
  shape = (partial_fc.padded_num_classes(num_classes, mesh.shape['model']), dim)
  w = jax.ShapeDtypeStruct(shape, jnp.float32)
  state = {'centers': w, 'opt': ({'mu': w, 'nu': w} if update == 'sparse' else
                                 jax.eval_shape(optax.adamw(1e-3).init, w))}
  spec = lambda x: P('model', None) if x.shape == shape else P()
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec(x))),
      state)


def matmul_flops(batch, num_classes, dim, sample_rate):
  """Head matmuls per step: cosines forward, then d/d embeddings and d/d W: 3 x 2*B*S*D."""
  return 6 * batch * int(sample_rate * num_classes) * dim


def measure_matmul_rate(repeats=5):
  """FLOP/s of a plain large f32 matmul on one device, the achievable-rate reference."""
  import jax
  import jax.numpy as jnp
  n = 2048
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / statistics.median(times)


def run_jax(num_classes, sample_rate, update, batch, dim, steps, max_shards=8, chunk=0,
            mesh_shape=None):
  _setup_jax(max_shards)
  import jax
  import numpy as np
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
  config = head_config(sample_rate, batch, chunk)
  if mesh_shape:
    from losses import partial_fc
    partial_fc.validate_partial_fc_config(config, num_classes, mesh_shape[1], mesh_shape[0])
  else:
    shards = model_shards_for(config, num_classes, max_shards)
    mesh_shape = (max_shards // shards, shards)
  mesh = jax.make_mesh(tuple(mesh_shape), ('data', 'model'),
                       axis_types=(AxisType.Auto,) * 2)
  step = make_head_step(config, mesh, num_classes, update)
  rng = np.random.RandomState(0)
  emb = jax.device_put(rng.randn(batch, dim).astype(np.float32), NamedSharding(mesh, P('data')))
  labels = [jax.device_put(rng.randint(0, num_classes, batch).astype(np.int32),
                           NamedSharding(mesh, P('data'))) for _ in range(steps + 2)]
  state = init_state(config, mesh, num_classes, dim, update)
  t0 = time.perf_counter()
  compiled = step.lower(state, emb, labels[0], jax.random.key(0)).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  times = []
  for i in range(steps + 2):
    t = time.perf_counter()
    state, loss = compiled(state, emb, labels[i], jax.random.key(i))
    loss.block_until_ready()
    if i >= 2:  # first runs: allocation warm-up
      times.append(time.perf_counter() - t)
  step_s = statistics.median(times)
  flops = matmul_flops(batch, num_classes, dim, sample_rate)
  return {
      'impl': 'jax', 'update': update, 'mesh': list(mesh.shape.values()), 'logit_chunk': chunk,
      'step_s_median': step_s, 'step_s_runs': times, 'compile_s': compile_s,
      'loss': float(loss),
      'xla_per_device_bytes': {'arguments': mem.argument_size_in_bytes,
                               'temp': mem.temp_size_in_bytes,
                               'output': mem.output_size_in_bytes},
      'head_matmul_gflop': flops / 1e9,
      'achieved_gflop_s': flops / step_s / 1e9,
      'plain_matmul_gflop_s': measure_matmul_rate() / 1e9,
  }


def run_torch(num_classes, sample_rate, batch, dim, steps, threads=2):
  import torch
  sys.path.insert(0, ROOT)
  from benchmarks import torch_partial_fc
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  step, _ = torch_partial_fc.make_step(num_classes, dim, sample_rate)
  emb = torch.randn(batch, dim)
  times = []
  for i in range(steps + 2):
    labels = torch.randint(0, num_classes, (batch,))
    t = time.perf_counter()
    loss, _ = step(emb, labels)
    if i >= 2:
      times.append(time.perf_counter() - t)
  a = torch.randn(2048, 2048)
  mm_times = []
  for _ in range(4):
    t = time.perf_counter()
    a @ a
    mm_times.append(time.perf_counter() - t)
  flops = matmul_flops(batch, num_classes, dim, sample_rate)
  return {'impl': 'torch', 'update': 'dense', 'step_s_median': statistics.median(times),
          'step_s_runs': times, 'loss': loss, 'threads': threads,
          'achieved_gflop_s': flops / statistics.median(times) / 1e9,
          'plain_matmul_gflop_s': 2 * 2048**3 / statistics.median(mm_times[1:]) / 1e9}


# ---------------------------------------------------------------------------------------------
# Ahead-of-time memory analysis (no allocation): probe and pod.
# ---------------------------------------------------------------------------------------------

def aot_bytes(num_classes, sample_rate, batch, dim, num_devices, mesh_shape, update='sparse'):
  """XLA's per-device memory analysis of the compiled head step with abstract inputs."""
  _setup_jax(num_devices)
  import jax
  import jax.numpy as jnp
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
  mesh = jax.make_mesh(mesh_shape, ('data', 'model'), axis_types=(AxisType.Auto,) * 2)
  config = head_config(sample_rate, batch)
  from losses import partial_fc
  partial_fc.validate_partial_fc_config(config, num_classes, mesh.shape['model'])
  step = make_head_step(config, mesh, num_classes, update)
  state = abstract_state(config, mesh, num_classes, dim, update)
  batch_sharding = NamedSharding(mesh, P('data'))
  emb = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=batch_sharding)
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_sharding)
  t0 = time.perf_counter()
  compiled = step.lower(state, emb, labels, jax.random.key(0)).compile()
  mem = compiled.memory_analysis()
  per_device = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  return {'per_device_bytes': per_device, 'per_device_gib': per_device / GIB,
          'arguments': mem.argument_size_in_bytes, 'outputs': mem.output_size_in_bytes,
          'temp': mem.temp_size_in_bytes, 'aliased': mem.alias_size_in_bytes,
          'compile_s': time.perf_counter() - t0}


def aot_train_step_bytes(num_classes, sample_rate, batch, dim, num_devices, mesh_shape, chunk=0):
  """Per-device memory of the whole train.py step (LCNet-0.5 at 128 px, PartialFC with the
  sparse W update, AdamW on the rest), lowered and compiled from abstract inputs: nothing is
  allocated, so a pod-sized class count can be checked on this machine."""
  _setup_jax(num_devices)
  import functools
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  import train
  from configs import arcface_clip
  from models.embedder import build_model
  c = arcface_clip.get_config()
  c.distill.enabled = False  # the teacher's memory is its own question (models/teacher.py)
  c.batch_size = batch
  c.model.embed_dim = dim
  c.loss.sample_rate = sample_rate
  c.loss.logit_chunk = chunk
  c.mesh.data, c.mesh.model = mesh_shape
  from losses import partial_fc
  partial_fc.validate_partial_fc_config(c, num_classes, mesh_shape[1], mesh_shape[0])
  mesh = train.create_mesh(c)
  model = build_model(c.model)
  lr_fn = train.create_learning_rate_fn(c)
  tx = train.create_optimizer(c, lr_fn)
  init_fn = functools.partial(train.init_train_state, c, model, tx, num_classes=num_classes,
                              mesh=mesh)
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  shardings = train.state_shardings(abstract, c, mesh)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       abstract, shardings)
  batch_sharding = NamedSharding(mesh, P(train.BATCH_AXES))
  size = c.data.image_size
  batch_in = {'image': jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8,
                                            sharding=batch_sharding),
              'label': jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_sharding)}
  step = train.jit_train_step(c, model, tx, lr_fn, num_classes, mesh, shardings)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch_in, jax.random.PRNGKey(0), None).compile()
  mem = compiled.memory_analysis()
  per_device = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  w_spec = shardings.params['head']['centers'].spec
  return {'what': 'train.py step', 'per_device_bytes': per_device,
          'per_device_gib': per_device / GIB, 'arguments': mem.argument_size_in_bytes,
          'outputs': mem.output_size_in_bytes, 'temp': mem.temp_size_in_bytes,
          'aliased': mem.alias_size_in_bytes, 'centers_spec': str(w_spec),
          'compile_s': time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------
# Driver: one subprocess per case.
# ---------------------------------------------------------------------------------------------

def run_case(case):
  """Runs in the child process; returns the result dict."""
  kind = case['kind']
  if kind == 'jax':
    out = run_jax(case['classes'], case['rate'], case['update'], case['batch'], case['dim'],
                  case['steps'], chunk=case.get('chunk', 0), mesh_shape=case.get('mesh'))
  elif kind == 'torch':
    out = run_torch(case['classes'], case['rate'], case['batch'], case['dim'], case['steps'])
  elif kind == 'aot_train':
    out = aot_train_step_bytes(case['classes'], case['rate'], case['batch'], case['dim'],
                               case['devices'], tuple(case['mesh']), case.get('chunk', 0))
  else:
    out = aot_bytes(case['classes'], case['rate'], case['batch'], case['dim'],
                    case['devices'], tuple(case['mesh']))
  out['peak_rss_gib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
  return out


def spawn(case, timeout=1200):
  """Runs one case in a fresh interpreter; a crash or OOM becomes an 'error' field."""
  proc = subprocess.run([sys.executable, __file__, '--case', json.dumps(case)],
                        capture_output=True, text=True, timeout=timeout)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  if proc.returncode != 0 or not lines:
    tail = (proc.stderr.strip().splitlines() or ['no output'])[-1]
    return dict(case, error=f'exit {proc.returncode}: {tail[:300]}')
  return dict(case, **json.loads(lines[-1]))


def emit(record):
  print(json.dumps(record), flush=True)


def torch_fits(num_classes, rate, batch, dim, budget_gib):
  """Rough peak of the torch reference: W, grad, 2 moments + ~5 logits-sized tensors."""
  return (4 * num_classes * dim * 4 + 5 * batch * int(rate * num_classes) * 4) / GIB < budget_gib


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--case', help='internal: run one JSON-described case')
  parser.add_argument('--classes', default='10000,100000,1281167')
  parser.add_argument('--rates', default='0.1,0.3,1.0')
  parser.add_argument('--updates', default='sparse')
  parser.add_argument('--batch', type=int, default=1024)
  parser.add_argument('--dim', type=int, default=256)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--rounds', type=int, default=1, help='repeat each jax/torch pair')
  parser.add_argument('--no-torch', action='store_true')
  parser.add_argument('--budget-gib', type=float, default=14.0,
                      help='skip a case whose estimate exceeds this (machine is shared)')
  parser.add_argument('--probe', action='store_true')
  parser.add_argument('--pod', action='store_true')
  parser.add_argument('--pod_train_step', action='store_true')
  parser.add_argument('--logit_chunks', default='0',
                      help='config.loss.logit_chunk values to compare (0: no chunking)')
  parser.add_argument('--meshes', default='',
                      help="data x model shapes to compare, e.g. 8x1,1x8 (default: --pod's 1 x "
                           "devices; the table: the most 'model' shards that fit)")
  parser.add_argument('--devices', type=int, default=64, help='--pod_train_step: faked devices')
  parser.add_argument('--pod_classes', type=int, default=29_000_000)
  parser.add_argument('--pod_dim', type=int, default=512)
  args = parser.parse_args()
  chunks = [int(c) for c in args.logit_chunks.split(',')]
  meshes = [[int(v) for v in m.split('x')] for m in args.meshes.split(',') if m]

  if args.case:
    print(json.dumps(run_case(json.loads(args.case))), flush=True)
    return

  base = {'batch': args.batch, 'dim': args.dim}
  if args.pod:
    # Head step for a 64-chip pod: W split over all 64 devices, compiled from abstract inputs.
    for rate in [float(r) for r in args.rates.split(',')]:
      emit(spawn(dict(base, kind='aot', classes=29_000_000, rate=rate, dim=512,
                      devices=64, mesh=[1, 64])))
    return
  if args.pod_train_step:
    # The whole train.py step for a 64-chip pod, W split over all 64 devices.
    for rate in [float(r) for r in args.rates.split(',')]:
      for mesh in meshes or [[1, args.devices]]:
        for chunk in chunks:
          emit(spawn(dict(base, kind='aot_train', classes=args.pod_classes, rate=rate,
                          dim=args.pod_dim, devices=args.devices, mesh=mesh, chunk=chunk)))
    return
  if args.probe:
    # Double the class count until XLA's estimate for 8 devices exceeds the machine's memory.
    classes = 1_281_167
    while True:
      r = spawn(dict(base, kind='aot', classes=classes, rate=0.1, devices=8, mesh=[1, 8]))
      r['total_gib'] = r.get('per_device_gib', float('nan')) * 8
      emit(r)
      if 'error' in r or r['total_gib'] > 22:
        break
      classes *= 2
    return

  for classes in [int(c) for c in args.classes.split(',')]:
    for rate in [float(r) for r in args.rates.split(',')]:
      jax_runs, torch_runs = {}, []
      for _ in range(args.rounds):
        for update, chunk, mesh in [(u, c, m) for u in args.updates.split(',') for c in chunks
                                    for m in meshes or [None]]:
          aot = spawn(dict(base, kind='aot', classes=classes, rate=rate, devices=8, mesh=[1, 8]))
          estimate = aot.get('per_device_gib', 0) * 8
          emit(dict(aot, total_gib=estimate))
          if 'error' in aot or estimate > args.budget_gib:  # no estimate: do not risk the OOM
            emit(dict(aot, skipped=f'XLA estimate {estimate:.1f} GiB > budget or unknown'))
            continue
          r = spawn(dict(base, kind='jax', classes=classes, rate=rate, update=update,
                         steps=args.steps, chunk=chunk, mesh=mesh))
          emit(r)
          if 'error' not in r:
            jax_runs.setdefault((update, chunk, str(mesh)), []).append(r['step_s_median'])
        if not args.no_torch:
          if not torch_fits(classes, rate, args.batch, args.dim, args.budget_gib):
            emit(dict(base, kind='torch', classes=classes, rate=rate, skipped='memory estimate'))
          else:
            r = spawn(dict(base, kind='torch', classes=classes, rate=rate, steps=args.steps))
            emit(r)
            if 'error' not in r:
              torch_runs.append(r['step_s_median'])
      for (update, chunk, mesh), runs in jax_runs.items():
        summary = {'summary': True, 'classes': classes, 'rate': rate, 'update': update,
                   'logit_chunk': chunk, 'mesh': mesh,
                   'jax_step_s': statistics.median(runs)}
        if torch_runs:
          summary['torch_step_s'] = statistics.median(torch_runs)
          summary['jax_over_torch'] = summary['jax_step_s'] / summary['torch_step_s']
        emit(summary)


if __name__ == '__main__':
  main()
