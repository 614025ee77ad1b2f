"""PartialFC, and the in-training evaluator's embedding, over 2 JAX processes x 4 CPU devices
equal 1 process x 8 devices."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import jax
import numpy as np
from jax.sharding import AxisType

from conftest import free_port

WORKER = pathlib.Path(__file__).with_name('multihost_worker.py')


def run_workers(mode):
  port = free_port()
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['JAX_PLATFORMS'] = 'cpu'
  procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), '2', str(port), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=WORKER.parent.parent) for i in range(2)]
  outputs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=180)
      assert p.returncode == 0, err[-3000:]
      outputs.append(json.loads(out.strip().splitlines()[-1]))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outputs


def load_worker():
  spec = importlib.util.spec_from_file_location('multihost_worker', WORKER)
  worker = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(worker)
  assert jax.device_count() == 8
  return worker, jax.make_mesh((2, 4), ('data', 'model'), axis_types=(AxisType.Auto,) * 2)


def test_two_processes_match_one_process():
  outputs = run_workers('head')
  worker, mesh = load_worker()
  expected = worker.head_step(mesh)
  assert expected['loss'] > 0 and expected['grad_rows_norm'] > 0
  for out in outputs:
    assert {k: v for k, v in out.items() if k != 'process_id'}.keys() == expected.keys()
    for key, value in expected.items():
      np.testing.assert_allclose(out[key], value, rtol=1e-5, err_msg=key)


def test_evaluator_embeds_each_hosts_share_and_every_host_gets_all():
  """Issue 13: with several processes the evaluator gave jit host-local numpy batches with a
  non-replicated sharding, which jax refuses (the first eval of a pod run would stop there)."""
  outputs = run_workers('eval')
  worker, mesh = load_worker()
  expected = np.array(worker.eval_embeddings(mesh)['embeddings'])
  assert expected.shape == (20, 16) and expected.std(axis=0).min() > 1e-3  # images differ
  for out in outputs:
    np.testing.assert_allclose(np.array(out['embeddings']), expected, rtol=1e-5, atol=1e-6)
