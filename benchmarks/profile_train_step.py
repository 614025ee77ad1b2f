"""Where the JAX training step's CPU time goes: an XLA profile of the demo step, by fusion kind.

  python benchmarks/profile_train_step.py                 # batch 64, 128 px, 5 profiled steps
  python benchmarks/profile_train_step.py --top 30

Runs the real step (benchmarks/train_step_speed.jax_candidate) under
jax.profiler.trace(create_perfetto_trace=True), then sums the XLA thunks' durations over both
threads: one JSON line per kind (the fusion name without its number: 'ynn_fusion' is work XLA
hands to YNNPACK, 'pad_slice_fusion' materialised slices, 'dot' Eigen matrix products, ...),
in thread-ms per step, then the top individual thunks, then the total and the wall time.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from benchmarks import timing  # pylint: disable=g-import-not-at-top
from benchmarks import train_step_speed  # pylint: disable=g-import-not-at-top

# Trace events that are not XLA work (the runtime's own spans, Python frames).
_NOT_OPS = ('ThunkExecutor', '$', 'PjitFunction', 'SlinkyThreadPool', 'CommonPjRt',
            'ParseArguments', 'Handle inputs', 'end: ')


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--image_size', type=int, default=128)
  p.add_argument('--num_classes', type=int, default=20000)
  p.add_argument('--variant', default='auto/auto/float32',
                 help='depthwise_impl/conv_impl/dtype, as in train_step_speed.py')
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--top', type=int, default=15)
  args = p.parse_args()
  timing.reexec_with_malloc_tunables(True)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.batch, args.image_size, args.image_size, 3), np.uint8)
  labels = rng.integers(0, args.num_classes, (args.batch,)).astype(np.int32)
  args.forward = False
  run, _ = train_step_speed.jax_candidate(args, images, labels)
  for _ in range(3):
    run()
  with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(args.steps):
        run()
    wall_ms = (time.perf_counter() - t0) * 1e3 / args.steps
    trace = json.load(gzip.open(glob.glob(os.path.join(d, '**', '*.json.gz'), recursive=True)[0]))
  per_op, per_kind = collections.Counter(), collections.Counter()
  for e in trace['traceEvents']:
    if e.get('ph') == 'X' and not e['name'].startswith(_NOT_OPS):
      per_op[e['name']] += e.get('dur', 0) / 1e3 / args.steps
  for name, ms in per_op.items():
    per_kind[re.sub(r'\.\d+$', '', name)] += ms
  for kind, ms in per_kind.most_common():
    timing.emit({'kind': kind, 'thread_ms_per_step': round(ms, 2)})
  for name, ms in per_op.most_common(args.top):
    timing.emit({'op': name, 'thread_ms_per_step': round(ms, 2)})
  timing.emit({'total_thread_ms_per_step': round(sum(per_op.values()), 1),
               'wall_ms_per_step_while_tracing': round(wall_ms, 1), 'variant': args.variant,
               'batch': args.batch, **timing.environment()})


if __name__ == '__main__':
  main()
