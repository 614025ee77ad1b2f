"""End to end on 8 faked devices: train, eval, checkpoint, resume, NaN stop, config errors."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import train
from configs.validate import ConfigError, validate_config
from tools.read_scalars import read_scalars

from conftest import FAST_COMPILE, REPO


def test_train_eval_checkpoint_and_resume_on_a_2d_mesh(tiny_config, tmp_path):
  c = tiny_config(**{'mesh.data': 4, 'mesh.model': 2, 'data.synthetic.num_templates': 15,
                     'num_train_steps': 40, 'log_every_steps': 10, 'eval_every_steps': 20,
                     'checkpoint_every_steps': 20, 'optimizer.learning_rate': 5e-3,
                     'loss.scale': 16.0, 'loss.m3': 0.1})
  state = train.train_and_evaluate(c, str(tmp_path))
  assert int(state.step) == 40
  centers = state.params['head']['centers']
  assert centers.shape == (16, 32)  # 15 classes padded to a multiple of the 2 model shards
  assert centers.sharding.spec == jax.sharding.PartitionSpec('model', None)
  scalars = read_scalars(str(tmp_path))
  loss = [v for _, v in scalars['train/loss']]
  assert [s for s, _ in scalars['train/loss']] == [10, 20, 30, 40]
  assert loss[-1] < 0.85 * loss[0], loss
  assert [s for s, _ in scalars['eval/synthetic_heldout/tpr@fpr=1e-04']] == [20, 40]
  assert 0.0 <= scalars['eval/synthetic_heldout/auroc'][-1][1] <= 1.0
  assert 'train/images_per_sec' in scalars and 'steps_per_sec' in scalars
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['20', '40']
  assert os.path.exists(tmp_path / 'config.json')
  # Resume equals no interruption: a workdir holding only what a run killed after its step-20
  # checkpoint leaves (that checkpoint, config.json, classes.json) trains on to 40 and ends with
  # the very same state, bit for bit (same batches, same step keys, same schedule).
  killed = tmp_path / 'killed'
  shutil.copytree(tmp_path / 'checkpoints' / '20', killed / 'checkpoints' / '20')
  for name in ('config.json', 'classes.json'):
    shutil.copy(tmp_path / name, killed / name)
  again = train.train_and_evaluate(c, str(killed))
  assert int(again.step) == 40
  whole = jax.tree_util.tree_leaves_with_path(jax.device_get(
      (state.params, state.batch_stats, state.opt_state, state.nonfinite_steps)))
  split = jax.tree.leaves(jax.device_get(
      (again.params, again.batch_stats, again.opt_state, again.nonfinite_steps)))
  assert len(whole) == len(split) > 100
  differ = [jax.tree_util.keystr(p) for (p, x), y in zip(whole, split) if not np.array_equal(x, y)]
  assert not differ, differ[:5]
  # It resumed at 20, not 0: its own log starts after the checkpoint.
  assert [s for s, _ in read_scalars(str(killed))['train/loss']] == [30, 40]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path):
  c = tiny_config(**{'optimizer.learning_rate': 1e30, 'optimizer.warmup_steps': 0,
                     'optimizer.grad_clip_norm': 1e30, 'log_every_steps': 1,
                     'checkpoint_every_steps': 1, 'num_train_steps': 20,
                     'max_nonfinite_steps': 2, 'eval_sets': ()})
  with pytest.raises(train.RunStopped, match=r'NaN/Inf.*: 3 steps skipped, over '
                     r'config.max_nonfinite_steps=2'):
    train.train_and_evaluate(c, str(tmp_path))
  steps = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints'))
  assert steps and steps[-1] < 20
  restored = ocp.StandardCheckpointer().restore(tmp_path / 'checkpoints' / str(steps[-1]) / 'default')
  leaves = jax.tree.leaves(restored['params'])
  assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
  # Skipped steps are saved up to the bound: a restart that meets the same batches goes over it
  # at the next bad step and stops there again, it does not loop.
  assert int(restored['nonfinite_steps']) == 2


@pytest.mark.parametrize('overrides, message', [
    ({'mesh.data': 3}, 'config.mesh'),
    ({'mesh.data': 4, 'mesh.model': 2, 'batch_size': 12}, 'config.batch_size'),
    ({'loss.sample_rate': 0.0}, 'config.loss.sample_rate'),
    ({'model.backbone': 'vgg'}, 'config.model.backbone'),
])
def test_bad_config_is_one_clear_line(tiny_config, overrides, message):
  with pytest.raises(ConfigError, match=message) as e:
    validate_config(tiny_config(**overrides), num_devices=8, process_count=1)
  assert '\n' not in str(e.value)


def run_main(workdir, *flags, timeout=300):
  cmd = [sys.executable, 'main.py', '--config=configs/arcface_clip.py:demo', f'--workdir={workdir}',
         *flags]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('flag, message', [
    ('--config.no_such_field=1', 'no_such_field'),
    ('--config.batch_size=abc', 'batch_size'),
    ('--config.mesh.data=3', 'config.mesh'),
])
def test_cli_rejects_bad_overrides_before_compiling(tmp_path, flag, message):
  result = run_main(tmp_path, flag, timeout=120)
  assert result.returncode != 0
  last = [l for l in result.stderr.splitlines() if l.strip()][-1]
  assert message in last, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'checkpoints').exists()


TINY_FLAGS = ['--config.data.image_size=32', "--config.data.sources=('synthetic',)",
              "--config.eval_sets=('synthetic_heldout',)", '--config.data.synthetic.num_templates=16',
              '--config.data.synthetic.template_size=48', '--config.data.synthetic.heldout_templates=6',
              '--config.model.width=0.25', '--config.model.embed_dim=32',
              '--config.model.squeeze_channels=8', '--config.batch_size=16',
              '--config.eval_batch_size=16', '--config.optimizer.warmup_steps=1',
              '--config.log_every_steps=5', '--config.eval_every_steps=1000',
              '--config.checkpoint_every_steps=5', '--config.num_train_steps=400']


def test_sigkill_then_restart_resumes_from_last_checkpoint(tmp_path):
  cmd = [sys.executable, 'main.py', '--config=configs/arcface_clip.py:demo',
         f'--workdir={tmp_path}', *TINY_FLAGS]
  env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt = tmp_path / 'checkpoints'
  deadline = time.time() + 240
  while time.time() < deadline:
    done = [d for d in os.listdir(ckpt) if d.isdigit()] if ckpt.exists() else []
    if any(int(d) >= 10 for d in done):
      break
    time.sleep(0.5)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = max(int(d) for d in os.listdir(ckpt) if d.isdigit())
  assert 10 <= saved < 400
  result = subprocess.run(cmd[:-1] + [f'--config.num_train_steps={saved + 10}'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from checkpoint at step {saved}' in result.stderr
  assert str(saved + 10) in os.listdir(ckpt)
  # The held-out figures of the finished run can be recomputed outside training.
  heldout = subprocess.run([sys.executable, '-m', 'tools.heldout', f'--workdir={tmp_path}',
                            '--capture_strength=1.0'], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=240)
  assert heldout.returncode == 0, heldout.stderr[-3000:]
  figures = json.loads(heldout.stdout.strip().splitlines()[-1])
  assert figures['capture_strength'] == 1.0 and f'step {saved + 10}' in figures['checkpoint']
  assert 0.0 <= figures['tpr@fpr=1e-04'] <= 1.0 and figures['pairs_positive'] > 0
