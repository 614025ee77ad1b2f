"""Train-step time of configs/release.py (MobileNetV2 + LN/BN head + CosFace) by input size and
number of frozen feature blocks (model.frozen_features): what freezing buys on a CPU.

  python benchmarks/frozen_features_speed.py --cases=128:0,128:11,224:14,224:19

One JSON line per case: median ms per step over --rounds timed steps after 2 warm-up steps (one
prepared batch, no input pipeline; every case in this process, one after the other).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from configs import release  # pylint: disable=g-import-not-at-top
from models.embedder import build_model  # pylint: disable=g-import-not-at-top
import train  # pylint: disable=g-import-not-at-top


def time_case(size, frozen, batch, rounds, num_classes=3000):
  c = release.get_config()
  c.data.image_size, c.model.frozen_features, c.batch_size = size, frozen, batch
  mesh = train.create_mesh(c)
  model = build_model(c.model)
  lr_fn = train.create_learning_rate_fn(c)
  tx = train.create_optimizer(c, lr_fn)
  state, shardings = train.create_train_state(c, model, tx, jax.random.PRNGKey(0), num_classes, mesh)
  step = train.jit_train_step(c, model, tx, lr_fn, num_classes, mesh, shardings)
  rng = np.random.default_rng(0)
  b = {'image': rng.integers(0, 255, (batch, size, size, 3), dtype=np.uint8),
       'label': rng.integers(0, num_classes, batch).astype(np.int32)}
  key = jax.random.PRNGKey(1)
  times = []
  for i in range(rounds + 2):
    t = time.perf_counter()
    state, m = step(state, b, key, None)
    jax.block_until_ready(m)
    if i >= 2:
      times.append(time.perf_counter() - t)
  ms = 1000 * float(np.median(times))
  return dict(bench='frozen_features_speed', image_size=size, frozen_features=frozen, batch=batch,
              ms_per_step_median=round(ms, 1), images_per_s=round(batch / ms * 1000, 1))


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--cases', default='128:0,128:11,224:14,224:19', help='size:frozen, ...')
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--rounds', type=int, default=4)
  args = p.parse_args()
  for case in args.cases.split(','):
    size, frozen = (int(v) for v in case.split(':'))
    print(json.dumps(time_case(size, frozen, args.batch, args.rounds)), flush=True)


if __name__ == '__main__':
  main()
