"""Fault injection for the trainer (issue 16, items 7-13): a changed config on an old workdir, a
corrupt newest checkpoint, two trainers, a full disk (a real tmpfs), bad --config, one class,
a data check that fails on a new workdir. Each checks the one line said and what is on disk.

One tiny run (32 px LCNet, 6 steps, checkpoints at 3 and 6) is trained once and copied for each
test. Only that run and the disk-full test train steps; the others stop before the first step.
"""
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import FAST_COMPILE, REPO, tiny_demo_config
from errors import DataError, RunStopped
import train
import workdir as workdir_lib


def config(**overrides):
  base = {'eval_sets': (), 'num_train_steps': 6, 'checkpoint_every_steps': 3,
          'log_every_steps': 3, 'keep_checkpoints': 5}
  return tiny_demo_config(**{**base, **overrides})


# The tests that train (the module's first use of `trained`, and the disk-full test) compile a
# train step: tens of seconds on two shared cores.
@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('trained') / 'wd')
  train.train_and_evaluate(config(), wd)
  assert sorted(os.listdir(os.path.join(wd, 'checkpoints'))) == ['3', '6']
  return wd


@pytest.fixture()
def copy_of(trained, tmp_path):
  wd = str(tmp_path / 'wd')
  shutil.copytree(trained, wd)
  return wd


def listing(folder):
  return sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, fs in os.walk(folder) for f in fs)


# ---- 7. config.json is written only after the resume check ----
@pytest.mark.slow
def test_changed_model_stops_before_touching_config_json(copy_of):
  before = open(os.path.join(copy_of, 'config.json'), 'rb').read()
  with pytest.raises(RunStopped, match='does not fit this config') as e:
    train.train_and_evaluate(config(**{'model.embed_dim': 16}), copy_of)
  assert '\n' not in str(e.value) and 'step 6' in str(e.value)
  assert open(os.path.join(copy_of, 'config.json'), 'rb').read() == before
  assert sorted(os.listdir(os.path.join(copy_of, 'checkpoints'))) == ['3', '6']  # nothing moved


# ---- 8. a corrupt newest checkpoint ----
@pytest.mark.parametrize('damage', ['truncate_data', 'empty_metadata'])
def test_corrupt_latest_checkpoint_falls_back_to_the_newest_intact_one(copy_of, caplog, damage):
  step6 = os.path.join(copy_of, 'checkpoints', '6')
  if damage == 'truncate_data':  # every array data file cut to a third (a disk error, a bad copy)
    paths = [os.path.join(d, f) for d, _, fs in os.walk(step6) for f in fs
             if os.path.basename(d) == 'd']
  else:
    paths = [os.path.join(step6, 'default', '_METADATA')]
  for path in paths:
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 3] if damage == 'truncate_data' else b'')
  caplog.set_level(logging.INFO)
  # num_train_steps=3: the run restores and stops there (training on is the disk-full test's).
  state = train.train_and_evaluate(config(num_train_steps=3), copy_of)
  assert int(state.step) == 3
  said = caplog.text
  assert 'Checkpoint at step 6' in said and 'corrupt' in said and 'does not fit' not in said
  assert 'Resuming from step 3 instead of 6' in said
  moved = os.listdir(os.path.join(copy_of, workdir_lib.CORRUPT_DIR))
  assert len(moved) == 1 and moved[0].startswith('6-')  # kept for a person to look at
  assert os.listdir(os.path.join(copy_of, 'checkpoints')) == ['3']


def test_inference_skips_a_corrupt_latest_checkpoint_and_says_so(copy_of, capsys):
  from inference.model import load_checkpoint
  for d, _, fs in os.walk(os.path.join(copy_of, 'checkpoints', '6')):
    for f in fs:
      if os.path.basename(d) == 'd':
        open(os.path.join(d, f), 'wb').write(b'')
  model = load_checkpoint(copy_of)
  assert model.source.endswith('(step 3)')
  err = capsys.readouterr().err
  assert 'skipped unreadable step 6' in err and 'using step 3' in err


# ---- 9. two trainers ----
def test_second_trainer_is_refused_with_the_holder_named(copy_of):
  before = listing(copy_of)
  with workdir_lib.lock(copy_of):
    holder = json.load(open(os.path.join(copy_of, workdir_lib.LOCK_NAME)))
    result = subprocess.run(
        [sys.executable, 'main.py', '--config=configs/arcface_clip.py:demo',
         f'--workdir={copy_of}'], cwd=REPO, capture_output=True, text=True, timeout=180,
        env=dict(os.environ, XLA_FLAGS=FAST_COMPILE))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('Stopped: ') and 'in use by another trainer' in last, result.stderr[-2000:]
    assert f'pid {holder["pid"]}' in last and holder['host'] in last
    assert 'Traceback' not in result.stderr
  assert listing(copy_of) == before  # the refused trainer wrote nothing


def test_stale_lock_of_a_killed_trainer_is_taken_over(tmp_path, caplog):
  wd = str(tmp_path / 'wd')
  os.makedirs(wd)
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  with open(os.path.join(wd, workdir_lib.LOCK_NAME), 'w') as f:
    json.dump({'host': 'h', 'pid': dead.pid}, f)
  caplog.set_level(logging.WARNING)
  with workdir_lib.lock(wd):
    assert json.load(open(os.path.join(wd, workdir_lib.LOCK_NAME)))['pid'] == os.getpid()
  assert 'Stale lock' in caplog.text and str(dead.pid) in caplog.text
  assert not os.path.exists(os.path.join(wd, workdir_lib.LOCK_NAME))


# ---- 10. a full disk: a real tmpfs ----
@contextlib.contextmanager
def tmpfs(path, size):
  os.makedirs(path)
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', path],
                    capture_output=True).returncode:
    pytest.skip('cannot mount a tmpfs here (needs root)')
  try:
    yield path
  finally:
    if subprocess.run(['umount', path]).returncode:  # a file still open: detach it anyway
      subprocess.run(['umount', '-l', path], check=True)


def test_too_little_space_at_start_writes_nothing(tmp_path):
  with tmpfs(str(tmp_path / 'small'), '512k') as mnt:
    with pytest.raises(RunStopped, match='MiB free, but a checkpoint') as e:
      train.train_and_evaluate(config(), os.path.join(mnt, 'wd'))
    assert '\n' not in str(e.value)
    assert os.listdir(mnt) == []  # no config.json, no 0-byte temp file, no workdir


@pytest.mark.slow
def test_disk_full_during_a_save_is_one_line_and_the_last_checkpoint_resumes(
    trained, tmp_path, monkeypatch):
  with tmpfs(str(tmp_path / 'disk'), '16m') as mnt:
    wd = os.path.join(mnt, 'wd')
    shutil.copytree(trained, wd)
    shutil.rmtree(os.path.join(wd, 'checkpoints', '6'))
    # Fill the disk to 256 KiB: config.json and the event file still fit, a checkpoint does not.
    with open(os.path.join(mnt, 'filler'), 'wb') as f:
      f.write(b'\0' * (os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize - 256 * 1024))
    # Only the start-of-run space check is switched off; the disk itself is really full.
    monkeypatch.setattr(workdir_lib, 'check_free_space', lambda *a: None)
    with pytest.raises(RunStopped, match='disk full while saving the checkpoint of step 6') as e:
      train.train_and_evaluate(config(), wd)
    assert 'last good checkpoint is step 3' in str(e.value) and '\n' not in str(e.value)
    assert os.listdir(os.path.join(wd, 'checkpoints')) == ['3']  # no *.orbax-checkpoint-tmp
    monkeypatch.undo()
    os.unlink(os.path.join(mnt, 'filler'))
    state = train.train_and_evaluate(config(num_train_steps=3), wd)  # space freed: step 3 loads
    assert int(state.step) == 3


def test_leftover_orbax_temp_folder_is_removed_at_start(copy_of):
  shutil.copytree(os.path.join(copy_of, 'checkpoints', '6'),
                  os.path.join(copy_of, 'checkpoints', '9.orbax-checkpoint-tmp-1234'))
  assert train.latest_checkpoint_step(copy_of) == 6
  train.train_and_evaluate(config(), copy_of)  # nothing left to train: starts and stops at 6
  assert sorted(os.listdir(os.path.join(copy_of, 'checkpoints'))) == ['3', '6']


# ---- 11. --config that does not load ----
@pytest.mark.parametrize('arg, message', [
    ('configs/nope.py', "cannot load configs/nope.py: [Errno 2] No such file"),
    ('configs/arcface_clip.py:foo', "unknown variant 'foo'"),
])
def test_config_file_that_does_not_load_is_one_line(tmp_path, arg, message):
  result = subprocess.run([sys.executable, 'main.py', f'--config={arg}',
                           f'--workdir={tmp_path / "wd"}'], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('Config error: ') and message in last, last
  assert not (tmp_path / 'wd').exists()


# ---- 12 and 13. nothing to learn; data checks before any write ----
def folder_config(root):
  return config(**{'data.sources': ('folder',), 'data.weights': (1.0,),
                   'data.folder.root': root, 'data.folder.label_mode': 'type'})


def test_one_class_stops_before_training_and_writes_nothing(tmp_path):
  root = tmp_path / 'docs' / 'only_type'
  root.mkdir(parents=True)
  for i in range(4):
    Image.fromarray(np.full((40, 30, 3), 40 * i, np.uint8)).save(root / f'{i}.png')
  wd = tmp_path / 'wd'
  with pytest.raises(DataError, match='has 1 class') as e:
    train.train_and_evaluate(folder_config(str(tmp_path / 'docs')), str(wd))
  assert '\n' not in str(e.value)
  assert not wd.exists()


def test_failed_data_check_on_a_new_workdir_writes_nothing(tmp_path):
  wd = tmp_path / 'wd'
  with pytest.raises(DataError, match='not a directory'):
    train.train_and_evaluate(folder_config(str(tmp_path / 'missing')), str(wd))
  assert not wd.exists()


def test_unreadable_pdf_reasons_come_from_the_file(tmp_path):
  from input_pipeline import pdf
  (tmp_path / 'a.pdf').write_bytes(b'hello, not a pdf')
  (tmp_path / 'b.pdf').write_bytes(b'%PDF-1.4\n1 0 obj\n<< /Encrypt 2 0 R >>\n')
  (tmp_path / 'c.pdf').write_bytes(b'%PDF-1.4\n1 0 obj\n<<')
  reasons = []
  for name in ('a', 'b', 'c', 'a'):
    with pytest.raises(ValueError) as e:
      pdf.render_pdf(str(tmp_path / f'{name}.pdf'), str(tmp_path / 'cache' / name),
                     render_side=64, max_pages=0)
    reasons.append(str(e.value))
  assert reasons[0] == reasons[3] == 'not a PDF (no %PDF- header)'
  assert reasons[1] == 'encrypted PDF (needs a password)'
  assert reasons[2].startswith('damaged PDF')



def test_malloc_relaunch_only_for_a_cpu_run(monkeypatch):
  """main.py's glibc setting pays only where XLA runs on the CPU (cpu_malloc.py): JAX_PLATFORMS
  or a TPU VM's / NVIDIA driver's device files mean an accelerator, and no re-launch."""
  import cpu_malloc  # pylint: disable=import-outside-toplevel

  def expected(env, dev=(), vfio=()):
    listing = {'/dev': list(dev), '/dev/vfio': list(vfio)}
    exists = lambda p: p in listing or p[len('/dev/'):] in dev
    return cpu_malloc.accelerator_expected(env, exists, listing.__getitem__)
  assert not expected({'JAX_PLATFORMS': 'cpu'}, ['accel0'])
  assert expected({'JAX_PLATFORMS': 'tpu'}) and expected({'JAX_PLATFORMS': 'cuda,cpu'})
  assert not expected({}, ['null', 'tty']) and not expected({}, [], ['vfio'])
  assert expected({}, ['accel0']) and expected({}, [], ['0']) and expected({}, ['nvidiactl'])
  # The re-launch itself: exec'd on the CPU with the setting, not at all on a TPU.
  calls = []
  monkeypatch.setattr(cpu_malloc.os, 'execv', lambda *a: calls.append(a))
  for var in ('GLIBC_TUNABLES', 'DOCEMBED_DEFAULT_MALLOC'):
    monkeypatch.setenv(var, '')  # recorded, so the re-launch's own setting is undone afterwards
    monkeypatch.delenv(var)
  monkeypatch.setenv('JAX_PLATFORMS', 'tpu')
  cpu_malloc.relaunch_with_tunables()
  assert not calls and 'GLIBC_TUNABLES' not in os.environ
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  cpu_malloc.relaunch_with_tunables()
  assert len(calls) == 1 and os.environ['GLIBC_TUNABLES'] == cpu_malloc.MALLOC_TUNABLES
