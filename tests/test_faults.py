"""Fault injection for the registry and the model files (issue 16, items 1-6): each promise of
README "What happens when things go wrong" made to happen. Two writers at once, truncated and
garbled files, a real SIGKILL in the middle of a save, symlinks and file modes, bad options.

The model is a real ONNX file (a fixed projection of the pixels, built with onnx.helper) run by
onnxruntime through the real CLI, so the CLI processes start in seconds; tests/test_faults_train.py
covers the trainer.
"""
import json
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper
import pytest
from PIL import Image

from conftest import REPO
from errors import CorruptFileError, InputError
import file_io
from inference import cli
from inference.model import load_model
from inference.registry import Registry

SIZE, DIM = 16, 8


def make_onnx_model(path, seed=0):
  """uint8 [B, 16, 16, 3] -> L2-normalised float32 [B, 8]; embedder.json beside it."""
  proj = np.random.RandomState(seed).randn(SIZE * SIZE * 3, DIM).astype(np.float32)
  nodes = [
      helper.make_node('Cast', ['images'], ['x'], to=TensorProto.FLOAT),
      helper.make_node('Reshape', ['x', 'flat_shape'], ['flat']),
      helper.make_node('MatMul', ['flat', 'proj'], ['e']),
      helper.make_node('LpNormalization', ['e'], ['embeddings'], axis=1, p=2),
  ]
  graph = helper.make_graph(
      nodes, 'pixel_projection',
      [helper.make_tensor_value_info('images', TensorProto.UINT8, ['B', SIZE, SIZE, 3])],
      [helper.make_tensor_value_info('embeddings', TensorProto.FLOAT, ['B', DIM])],
      initializer=[helper.make_tensor('flat_shape', TensorProto.INT64, [2], [-1, SIZE * SIZE * 3]),
                   helper.make_tensor('proj', TensorProto.FLOAT, proj.shape, proj.ravel())])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
  model.ir_version = 8
  onnx.save(model, path)
  meta = {'fingerprint': f'pixproj{seed}', 'embed_dim': DIM, 'model_config': {},
          'preprocessing': {'image_size': SIZE, 'resize': 'stretch', 'color': 'RGB',
                            'dtype': 'uint8'}}
  with open(os.path.splitext(path)[0] + '.json', 'w') as f:
    json.dump(meta, f)
  return path


def doc_image(path, kind, i=0):
  rng = np.random.RandomState(100 * kind + i)
  layout = np.random.RandomState(kind).randint(0, 256, (4, 4, 3))
  x = np.kron(layout, np.ones((4, 4, 1))) + rng.normal(0, 3, (SIZE, SIZE, 3))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(path)
  return path


@pytest.fixture()
def setup(tmp_path):
  model = make_onnx_model(str(tmp_path / 'embedder.onnx'))
  images = [doc_image(str(tmp_path / 'img' / f'{k}.png'), k) for k in range(6)]
  registry = str(tmp_path / 'types.npz')
  assert cli.main(['register', '--checkpoint', model, '--registry', registry, '--label', 'A',
                   images[0], '--no-progress']) == 0
  return model, images, registry


def run_cli(*argv):
  """The CLI in a fresh process, as a person runs it."""
  return subprocess.run([sys.executable, '-m', 'inference.cli', *argv, '--no-progress'], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def one_error_line(capsys, *argv):
  """Runs the CLI in-process; returns its only stderr line (exit status 1, nothing else)."""
  assert cli.main(list(argv)) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: '), err
  return err[0]


def labels_of(registry):
  return sorted(e['label'] for e in Registry.load(registry).list())


# ---- 1. two writers ----
def test_two_register_processes_at_once_both_land(setup):
  model, images, registry = setup
  procs = [subprocess.Popen([sys.executable, '-m', 'inference.cli', 'register', '--checkpoint',
                             model, '--registry', registry, '--label', label, image,
                             '--no-progress'], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for label, image in (('B', images[1]), ('C', images[2]))]
  for p in procs:
    assert p.wait(timeout=120) == 0, p.stderr.read()
  assert labels_of(registry) == ['A', 'B', 'C']


def test_a_writer_waits_for_the_lock_and_merges_with_what_the_holder_wrote(setup):
  model, images, registry = setup
  with file_io.locked(registry):
    proc = subprocess.Popen([sys.executable, '-m', 'inference.cli', 'register', '--checkpoint',
                             model, '--registry', registry, '--label', 'B', images[1],
                             '--no-progress'], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # While we hold the lock, our own read-modify-write lands; the CLI must wait for it.
    reg = Registry.load(registry)
    reg.add_embeddings('C', np.ones((1, DIM), np.float32))
    reg.save(registry)
    time.sleep(3)  # the other process has started, embedded, and is waiting on the lock
    assert proc.poll() is None and labels_of(registry) == ['A', 'C']
  assert proc.wait(timeout=120) == 0, proc.stderr.read()
  assert labels_of(registry) == ['A', 'B', 'C']


# ---- 2. truncated and empty registries ----
@pytest.mark.parametrize('cut', [0, 10, 100, 0.5, -30])
def test_truncated_registry_is_one_line_for_every_command(setup, capsys, cut):
  model, images, registry = setup
  data = open(registry, 'rb').read()
  n = int(len(data) * cut) if isinstance(cut, float) else cut
  open(registry, 'wb').write(data[:n])
  before = open(registry, 'rb').read()
  for argv in (['list', '--registry', registry],
               ['classify', '--checkpoint', model, '--registry', registry, images[0]],
               ['register', '--checkpoint', model, '--registry', registry, '--label', 'B',
                images[1]]):
    line = one_error_line(capsys, *argv, '--no-progress')
    assert registry in line and ('empty' in line or 'damaged' in line), line
  assert open(registry, 'rb').read() == before  # nothing lost, nothing half-fixed


# ---- 3. hand-edited registries ----
def rewrite(registry, edit_meta=None, embeddings=None):
  with np.load(registry) as f:
    emb, meta = f['embeddings'], json.loads(bytes(f['meta_json']).decode())
  if edit_meta:
    meta = edit_meta(meta)
  emb = emb if embeddings is None else embeddings
  np.savez(registry, embeddings=emb,
           meta_json=np.frombuffer(json.dumps(meta).encode(), np.uint8))


@pytest.mark.parametrize('edit, message', [
    (lambda m: {k: v for k, v in m.items() if k != 'fingerprint'}, "lacks 'fingerprint'"),
    (lambda m: [m], 'not a JSON object'),
    (lambda m: dict(m, labels=[7]), "'labels' must be 1 strings"),
    (lambda m: dict(m, labels=['a/b/c']), 'stored label'),
    (lambda m: dict(m, embed_dim='8'), "'embed_dim' is a str"),
    (lambda m: dict(m, threshold=float('nan')), 'threshold nan'),
    (lambda m: dict(m, sources=[]), "'sources' must be 1 strings"),
])
def test_hand_edited_metadata_is_refused_in_one_line(setup, capsys, edit, message):
  _, _, registry = setup
  rewrite(registry, edit)
  line = one_error_line(capsys, 'list', '--registry', registry)
  assert registry in line and message in line, line


def test_nan_embeddings_are_refused_not_classified(setup, capsys):
  model, images, registry = setup
  rewrite(registry, embeddings=np.full((1, DIM), np.nan, np.float32))
  line = one_error_line(capsys, 'classify', '--checkpoint', model, '--registry', registry,
                        images[0], '--no-progress')
  assert 'NaN or Inf' in line and "'A'" in line


def test_npy_header_that_lies_about_its_shape_is_refused_before_allocating(setup, capsys):
  _, _, registry = setup
  with zipfile.ZipFile(registry) as z:
    members = {n: z.read(n) for n in z.namelist()}
  header = members['embeddings.npy']
  lie = header.replace(b"'shape': (1, 8)", b"'shape': (100000000, 256)")
  assert lie != header
  with zipfile.ZipFile(registry, 'w') as z:
    for name, data in members.items():
      z.writestr(name, lie if name == 'embeddings.npy' else data)
  line = one_error_line(capsys, 'list', '--registry', registry)
  assert 'header says float32 [100000000, 256]' in line and 'bytes are stored' in line


def test_pickled_registry_is_refused(setup, capsys):
  _, _, registry = setup
  np.savez(registry, embeddings=np.array([object()], dtype=object), meta_json=np.zeros(1, np.uint8))
  assert 'Python objects' in one_error_line(capsys, 'list', '--registry', registry)


# ---- 4. modes, symlinks, stored labels, killed writers ----
def test_register_keeps_file_mode_and_symlink_target(setup, tmp_path):
  model, images, registry = setup
  os.chmod(registry, 0o644)
  link = str(tmp_path / 'link.npz')
  os.symlink(registry, link)
  assert cli.main(['register', '--checkpoint', model, '--registry', link, '--label', 'B',
                   images[1], '--no-progress']) == 0
  assert os.path.islink(link) and os.readlink(link) == registry
  assert stat.S_IMODE(os.stat(registry).st_mode) == 0o644
  assert labels_of(registry) == ['A', 'B']


def test_bad_stored_label_fails_before_anything_is_written(setup, capsys):
  model, images, registry = setup
  rewrite(registry, lambda m: dict(m, labels=['bad\nlabel']))
  before = open(registry, 'rb').read()
  line = one_error_line(capsys, 'register', '--checkpoint', model, '--registry', registry,
                        '--label', 'B', images[1], '--no-progress')
  assert 'control characters' in line
  assert open(registry, 'rb').read() == before


SLOW_WRITER = '''
import sys, time
sys.path.insert(0, {repo!r})
import file_io
def write(tmp, fd):
  import os
  os.write(fd, b'half a registry')
  print('writing', flush=True)
  time.sleep(60)
with file_io.locked({path!r}):
  file_io._atomic({path!r}, '.tmp', write)
'''


def test_sigkill_during_save_keeps_the_old_file_and_the_temp_is_cleaned(setup, capsys):
  model, images, registry = setup
  before = open(registry, 'rb').read()
  proc = subprocess.Popen([sys.executable, '-c', SLOW_WRITER.format(repo=REPO, path=registry)],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'writing'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  folder = os.path.dirname(registry)
  leftovers = [n for n in os.listdir(folder) if n.startswith('.types.npz.')]
  assert len(leftovers) == 1 and open(registry, 'rb').read() == before
  # The kernel dropped the dead writer's lock; the next writer removes its temp file.
  assert cli.main(['register', '--checkpoint', model, '--registry', registry, '--label', 'B',
                   images[1], '--no-progress']) == 0
  assert f'removed {leftovers[0]}' in capsys.readouterr().err
  assert not [n for n in os.listdir(folder) if n.startswith('.types.npz.')]
  assert labels_of(registry) == ['A', 'B']


def test_disk_full_during_save_keeps_the_old_file(setup, tmp_path):
  """A real full file system: a 64 KiB tmpfs (root only; skipped where mount is refused)."""
  model, images, registry = setup
  mnt = tmp_path / 'small'
  mnt.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(mnt)],
                    capture_output=True).returncode:
    pytest.skip('cannot mount a tmpfs here')
  try:
    small = str(mnt / 'types.npz')
    reg = Registry.load(registry)
    reg.save(small)
    before = open(small, 'rb').read()
    reg.add_embeddings('B', np.random.RandomState(0).randn(3000, DIM))  # ~100 KB: does not fit
    with pytest.raises(OSError) as e:
      reg.save(small)
    assert e.value.errno == 28  # ENOSPC
    assert open(small, 'rb').read() == before and os.listdir(mnt) == ['types.npz']
  finally:
    if subprocess.run(['umount', str(mnt)]).returncode:  # a file still open: detach it anyway
      subprocess.run(['umount', '-l', str(mnt)], check=True)


# ---- 5. options ----
@pytest.mark.parametrize('option', [['--top-k', '0'], ['--top-k', '-3'], ['--threshold', 'nan'],
                                    ['--threshold', 'inf']])
def test_bad_classify_options_are_refused(setup, capsys, option):
  model, images, registry = setup
  with pytest.raises(SystemExit) as e:
    cli.main(['classify', '--checkpoint', model, '--registry', registry, images[0], *option])
  assert e.value.code == 2
  assert option[0] in capsys.readouterr().err


# ---- 6. truncated model files ----
def test_truncated_onnx_is_one_line(setup, capsys):
  model, images, registry = setup
  data = open(model, 'rb').read()
  for n in (0, 20, len(data) // 2):
    open(model, 'wb').write(data[:n])
    line = one_error_line(capsys, 'classify', '--checkpoint', model, '--registry', registry,
                          images[0], '--no-progress')
    assert model in line and ('ONNX' in line or 'empty' in line), line


def test_truncated_jaxexport_and_garbled_metadata_are_one_line(tmp_path):
  import jax
  import jax.numpy as jnp
  path = str(tmp_path / 'embedder.jaxexport')
  spec = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.uint8)
  exported = jax.export.export(jax.jit(lambda x: x.reshape(1, -1)[:, :DIM] * 1.0))(spec)
  data = bytes(exported.serialize())
  make_onnx_model(str(tmp_path / 'embedder.onnx'))  # writes embedder.json
  for n in (0, 16, len(data) // 2):
    open(path, 'wb').write(data[:n])
    with pytest.raises(CorruptFileError, match='not a readable jax.export file'):
      load_model(path)
  open(str(tmp_path / 'embedder.json'), 'w').write('{"fingerprint": "x", ')
  with pytest.raises(CorruptFileError, match='embedder.json: export metadata is not valid JSON'):
    load_model(path)


@pytest.mark.parametrize('content, message', [
    (b'', 'is empty'), (b'{"model": {', 'is not valid JSON'), (b'[1, 2]', 'not a JSON object'),
    (b'{"model": {}}', 'lacks data'), (b'\xff\xfe', 'not UTF-8')])
def test_garbled_workdir_config_json_is_one_line(tmp_path, capsys, content, message):
  wd = tmp_path / 'wd'
  (wd / 'checkpoints').mkdir(parents=True)
  (wd / 'config.json').write_bytes(content)
  line = one_error_line(capsys, 'embed', '--checkpoint', str(wd), '--data', str(tmp_path),
                        '--out', str(tmp_path / 'e.npy'))
  assert str(wd / 'config.json') in line and message in line, line


def test_unreadable_image_reason_is_said_once(tmp_path):
  from inference.images import load_image, default_preprocessing
  bad = tmp_path / 'x.png'
  bad.write_text('hello')
  with pytest.raises(InputError) as e:
    load_image(str(bad), default_preprocessing(SIZE))
  assert str(e.value).count('not a readable image') == 1
