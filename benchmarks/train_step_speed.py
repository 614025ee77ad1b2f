"""Training-step speed on CPU: the project's jitted train step vs its PyTorch twin.

  python benchmarks/train_step_speed.py                       # batch 64 and 256, 128 px
  python benchmarks/train_step_speed.py --batches=64 --impls=auto,shifted_vjp --conv_impls=auto,matmul --forward

('auto' on CPU = the native kernels of models/native; 'shifted_vjp' / 'matmul' = the pure-JAX
formulations used without them.)

Times train.make_train_step (the real step: configs/arcface_clip.py:demo model, CosFace over
--num_classes classes, AdamW, jitted and donated as train.py does) against
benchmarks/torch_lcnet.py (NCHW and channels-last). Data loading is not timed: batches are
prepared beforehand.

Every candidate runs in a fresh worker process, alone (XLA's and PyTorch's thread pools in one
process slow each other down: there the JAX step measured 749 ms against 293 ms alone; and with
several JAX processes alive one of them sometimes ran 3-4x slower): --passes rounds over the
candidates, --rounds timed steps each after --warmup, medians over all passes (timed_passes()). One JSON line per candidate with median
ms/step, images/s and the ratio JAX/PyTorch (against the faster PyTorch layout). --forward also
times the inference forward pass (inference/model.make_embed_fn) at --forward_batches against
the twin in eval mode.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from benchmarks import timing  # pylint: disable=g-import-not-at-top

RESULT_PREFIX = '@@result '


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batches', default='64,256')
  p.add_argument('--image_size', type=int, default=128)
  p.add_argument('--num_classes', type=int, default=20000)
  p.add_argument('--impls', default='auto',
                 help='config.model.depthwise_impl values to time (comma-separated)')
  p.add_argument('--conv_impls', default='auto',
                 help='config.model.conv_impl values to time (comma-separated)')
  p.add_argument('--dtypes', default='float32', help='config.model.dtype values (JAX side)')
  p.add_argument('--xla_flag_sets', default='',
                 help="';'-separated XLA_FLAGS for extra JAX candidates, e.g. "
                      "'--xla_cpu_multi_thread_eigen=false'")
  p.add_argument('--torch_layouts', default='nchw,nhwc')
  p.add_argument('--passes', type=int, default=3, help='fresh worker per candidate per pass')
  p.add_argument('--rounds', type=int, default=5, help='timed steps per worker per pass')
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--forward', action='store_true', help='also time the inference forward pass')
  p.add_argument('--forward_batches', default='1,64')
  p.add_argument('--default_malloc', action='store_true',
                 help='keep glibc defaults (see cpu_malloc.py)')
  # Internal: run as one candidate's worker process.
  p.add_argument('--worker', default='', help=argparse.SUPPRESS)
  p.add_argument('--variant', default='', help=argparse.SUPPRESS)
  p.add_argument('--batch', type=int, default=0, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def demo_config(args, batch, variant):
  from configs import arcface_clip  # pylint: disable=g-import-not-at-top
  impl, conv_impl, dtype = variant.split('/')
  config = arcface_clip.get_config('demo')
  config.batch_size = batch
  config.data.image_size = args.image_size
  config.model.depthwise_impl = impl
  config.model.conv_impl = conv_impl
  config.model.dtype = dtype
  return config


def jax_candidate(args, images, labels):
  """(train_fn, forward_fn_factory) for one JAX variant: the real train step, state carried."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  import train  # pylint: disable=g-import-not-at-top
  from inference.model import make_embed_fn  # pylint: disable=g-import-not-at-top
  from models.embedder import build_model  # pylint: disable=g-import-not-at-top
  config = demo_config(args, args.batch, args.variant)
  model = build_model(config.model)
  mesh = train.create_mesh(config)
  lr_fn = train.create_learning_rate_fn(config)
  tx = train.create_optimizer(config, lr_fn)
  rng = jax.random.PRNGKey(0)
  # As train.train_and_evaluate builds and jits the step.
  initial, shardings = train.create_train_state(config, model, tx, rng, args.num_classes, mesh)
  step_fn = train.jit_train_step(config, model, tx, lr_fn, args.num_classes, mesh, shardings)
  state = {'state': initial}
  device_batch = train.global_batch({'image': images, 'label': labels},
                                    NamedSharding(mesh, P(train.BATCH_AXES)))

  def run():
    state['state'], metrics = step_fn(state['state'], device_batch, rng, None)
    jax.block_until_ready(metrics['loss'])

  def forward(fwd_images):
    s = state['state']
    variables = jax.device_get({'params': s.params['model'], 'batch_stats': s.batch_stats})
    fn = jax.jit(make_embed_fn(model, variables))
    return lambda: jax.block_until_ready(fn(fwd_images))

  return run, forward


def torch_candidate(args, images, labels):
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_lcnet  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  layout = args.variant
  model = torch_lcnet.Embedder(image_size=args.image_size)
  step = torch_lcnet.make_train_step(model, args.num_classes, channels_last=layout == 'nhwc')
  x = torch_twin_input(images, layout)
  y = torch.from_numpy(labels).long()

  def forward(fwd_images):
    xf = torch_twin_input(fwd_images, layout)

    def run():
      model.eval()
      with torch.no_grad():
        F.normalize(model(xf), dim=1)

    return run

  return lambda: step(x, y), forward


def torch_twin_input(images, layout):
  """The pipeline's NHWC uint8 batch, permuted: that is already a channels-last NCHW tensor."""
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.from_numpy(images).permute(0, 3, 1, 2)
  return x.contiguous(memory_format=torch.channels_last if layout == 'nhwc' else
                      torch.contiguous_format)


def random_images(batch, size):
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.random.default_rng(batch).integers(0, 256, (batch, size, size, 3), np.uint8)


def worker(args):
  """Sets up one candidate, then times one call per request line on stdin."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  images = random_images(args.batch, args.image_size)
  labels = np.random.default_rng(args.batch + 1).integers(
      0, args.num_classes, (args.batch,)).astype(np.int32)
  make = jax_candidate if args.worker == 'jax' else torch_candidate
  train_fn, forward = make(args, images, labels)
  fns = {'train': train_fn}
  for _ in range(args.warmup):
    train_fn()
  if args.forward:
    for b in args.forward_batches.split(','):
      fns[f'forward{b}'] = forward(random_images(int(b), args.image_size))
      for _ in range(args.warmup):
        fns[f'forward{b}']()
  print(RESULT_PREFIX + 'ready', flush=True)
  for line in sys.stdin:
    fn = fns[line.strip()]
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    print(RESULT_PREFIX + json.dumps({'wall_ms': (time.perf_counter() - w0) * 1e3,
                                      'cpu_ms': (time.process_time() - c0) * 1e3}), flush=True)


class Worker:
  """A candidate's process: request() sends one request line and returns its timing."""

  def __init__(self, framework, variant, batch, args, xla_flags=''):
    cmd = [sys.executable, os.path.abspath(__file__), f'--worker={framework}',
           f'--variant={variant}', f'--batch={batch}', f'--image_size={args.image_size}',
           f'--num_classes={args.num_classes}', f'--warmup={args.warmup}',
           f'--forward_batches={args.forward_batches}'] + (['--forward'] if args.forward else [])
    self.name = (framework, variant + (f' {xla_flags}' if xla_flags else ''))
    env = dict(os.environ, XLA_FLAGS=xla_flags) if xla_flags else None
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=env)

  def _read(self):
    for line in self.proc.stdout:
      if line.startswith(RESULT_PREFIX):
        return line[len(RESULT_PREFIX):].strip()
    raise RuntimeError(f'benchmark worker {self.name} exited with {self.proc.wait()}')

  def wait_ready(self):
    assert self._read() == 'ready'

  def request(self, what):
    self.proc.stdin.write(what + '\n')
    self.proc.stdin.flush()
    return json.loads(self._read())

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def timed_passes(variants, batch, args):
  """{(kind, batch): {name: samples}}: `passes` rounds over the candidates, each candidate in a
  fresh worker process that is alone on the machine while it runs.

  Only one worker lives at a time: with several JAX workers alive (even idle), one of them would
  now and then run its steps 3-4x slower while using twice the CPU (seen with every flag and
  start order). Each pass starts one candidate later, so slow phases of the machine hit all alike.
  """
  times = {}
  kinds = [('train_step', batch, 'train')]
  if args.forward:
    kinds += [('forward', int(b), f'forward{b}') for b in args.forward_batches.split(',')]
  for p in range(args.passes):
    for framework, variant, flags in variants[p % len(variants):] + variants[:p % len(variants)]:
      w = Worker(framework, variant, batch, args, flags)
      w.wait_ready()
      for kind, b, what in kinds:
        samples = times.setdefault((kind, b), {}).setdefault(
            w.name, {'wall_ms': [], 'cpu_ms': []})
        for _ in range(args.rounds * (2 if kind == 'forward' else 1)):
          t = w.request(what)
          samples['wall_ms'].append(t['wall_ms'])
          samples['cpu_ms'].append(t['cpu_ms'])
      w.close()
  return times


def report(kind, times, batch, meta):
  """One JSON line per candidate; ratio against the fastest PyTorch layout."""
  medians = {name: timing.summary(s)['wall_ms_median'] for name, s in times.items()}
  torch_best = min((m for name, m in medians.items() if name[0] == 'torch'), default=None)
  for name, samples in times.items():
    framework, variant = name
    rec = {'bench': kind, 'framework': framework, 'variant': variant, 'batch': batch}
    rec.update(meta)
    rec.update(timing.summary(samples))
    rec['images_per_s'] = round(batch * 1e3 / rec['wall_ms_median'], 1)
    if torch_best and framework == 'jax':
      rec['ratio_jax_over_torch'] = round(rec['wall_ms_median'] / torch_best, 3)
    rec.update(timing.environment())
    timing.emit(rec)


def main():
  args = parse_args()
  timing.reexec_with_malloc_tunables(not args.default_malloc)
  if args.worker:
    worker(args)
    return
  meta = {'image_size': args.image_size, 'num_classes': args.num_classes}
  variants = [('jax', f'{i}/{c}/{d}', '') for i in args.impls.split(',')
              for c in args.conv_impls.split(',') for d in args.dtypes.split(',')]
  variants += [('jax', f'{args.impls.split(",")[0]}/{args.conv_impls.split(",")[0]}/float32', f)
               for f in args.xla_flag_sets.split(';') if f]
  variants += [('torch', l, '') for l in args.torch_layouts.split(',') if l]
  for batch in (int(b) for b in args.batches.split(',')):
    for (kind, b), times in timed_passes(variants, batch, args).items():
      report(kind, times, b, meta)
    args.forward = False  # forward figures do not depend on the training batch


if __name__ == '__main__':
  main()
