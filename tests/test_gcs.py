"""The Cloud TPU way, against a GCS emulator on localhost (tests/gcs_emulator.py; no mocks):
`python main.py --workdir=gs://bucket/run` on a `gs://` document folder, killed with SIGKILL
after a checkpoint and resumed from the bucket, then refused once the folder's classes change;
and file_io's gs:// branch on its own."""
import io
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from errors import LabelsChanged
import train

NUM_TYPES = 16


def _png(seed):
  rng = np.random.default_rng(seed)
  img = np.full((40, 32, 3), 255, np.uint8)
  for _ in range(6):  # a few dark blocks: each type its own layout
    y, x = rng.integers(0, 30), rng.integers(0, 24)
    img[y:y + 8, x:x + rng.integers(4, 9)] = rng.integers(0, 120, 3)
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, 'PNG')
  return buf.getvalue()


def test_file_io_on_gcs(emulator):
  import file_io  # pylint: disable=import-outside-toplevel
  emulator.create_bucket('unit')
  path = 'gs://unit/a/b/registry.json'
  file_io.write_json_atomic(path, {'x': 1})
  file_io.write_json_atomic(path, {'x': 2})  # over an existing object
  assert file_io.read_json(path) == {'x': 2}
  file_io.write_with_atomic('gs://unit/a/f.npz', lambda tmp: np.savez(tmp, v=np.arange(3)))
  assert file_io.read_npz('gs://unit/a/f.npz', ('v',))['v'].tolist() == [0, 1, 2]
  # A writer killed between its temp object and the rename leaves a temp that is cleaned.
  emulator.upload('unit', 'a/b/.registry.json.abcd1234.tmp', b'half')
  assert file_io.clean_stale_temps(path) == ['.registry.json.abcd1234.tmp']
  assert [n for n in emulator.list_objects('unit') if not n.endswith('/')] == [
      'a/b/registry.json', 'a/f.npz']
  assert file_io.isdir('gs://unit/a') and file_io.listdir('gs://unit/a') == ['b', 'f.npz']
  assert [(d[len('gs://unit'):], f) for d, _, f in file_io.walk('gs://unit')] == [
      ('', []), ('/a', ['f.npz']), ('/a/b', ['registry.json'])]
  assert file_io.resolve('gs://unit/a') == 'gs://unit/a'
  with pytest.raises(file_io.InputError, match='no such'):
    file_io.read_json('gs://unit/missing.json')


def test_paperwork_render_cache_on_gcs(emulator, monkeypatch):
  from input_pipeline import rendered  # pylint: disable=import-outside-toplevel
  emulator.create_bucket('renders')
  first = rendered.bank([0, 1], 1, 0, 48, cache_dir='gs://renders/cache', workers=1)
  [name] = [n for n in emulator.list_objects('renders') if n.endswith('.npz')]
  assert name.startswith('cache/paperwork-')
  monkeypatch.setattr(rendered, 'render_bank', lambda *a, **k: pytest.fail('rendered again'))
  again = rendered.bank([0, 1], 1, 0, 48, cache_dir='gs://renders/cache', workers=1)
  np.testing.assert_array_equal(first[0], again[0])  # read back from the bucket


def test_pdf_folder_and_page_cache_on_gcs(emulator):
  from input_pipeline import pdf  # pylint: disable=import-outside-toplevel
  emulator.create_bucket('pdfs')
  pages = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (80, 60, 3), np.uint8))
           for i in range(2)]
  buf = io.BytesIO()
  pages[0].save(buf, 'PDF', save_all=True, append_images=pages[1:])
  emulator.upload('pdfs', 'docs/sub/a.pdf', buf.getvalue())
  emulator.upload('pdfs', 'docs/broken.pdf', b'%PDF-1.4\n garbage that is no PDF')
  found, labels, n, report = pdf.scan_pdfs('gs://pdfs/docs', cache_dir='gs://pdfs/cache',
                                           render_side=64)
  assert n == 2 and list(labels) == [0, 1] and [r for r, _ in report.skipped] == ['broken.pdf']
  assert all(p.startswith('gs://pdfs/cache/') and p.endswith('.png') for p in found)
  img = Image.open(io.BytesIO(emulator.download('pdfs', found[0][len('gs://pdfs/'):])))
  assert max(img.size) == 64
  again, _, _, _ = pdf.scan_pdfs('gs://pdfs/docs', cache_dir='gs://pdfs/cache', render_side=64)
  assert again == found  # the cache's pages.txt was read back
  assert report.class_names == ['sub/a.pdf#page_00000.png', 'sub/a.pdf#page_00001.png']
  assert not [n for n in emulator.list_objects('pdfs') if '.tmp' in n]


def _finished_steps(emulator, bucket):
  names = emulator.list_objects(bucket, 'run/checkpoints/')
  return sorted(int(m.group(1)) for n in names
                if (m := re.fullmatch(r'run/checkpoints/(\d+)/commit_success\.txt', n)))


@pytest.mark.slow
def test_train_on_gcs_killed_and_resumed(emulator, tiny_config):
  bucket = 'docs-bucket'
  emulator.create_bucket(bucket)
  for t in range(NUM_TYPES):
    for i in range(2):
      emulator.upload(bucket, f'documents/type_{t:02d}/scan_{i}.png', _png(t * 1000 + i))
  cmd = [sys.executable, 'main.py', '--config=configs/arcface_clip.py:demo',
         f'--workdir=gs://{bucket}/run', '--config.data.image_size=32',
         "--config.data.sources=('folder',)", f'--config.data.folder.root=gs://{bucket}/documents',
         '--config.data.folder.verify=header',
         '--config.eval_sets=()', '--config.data.augment.enabled=False',  # start-up time
         '--config.model.width=0.25', '--config.model.embed_dim=32',
         '--config.model.squeeze_channels=8', '--config.batch_size=16',
         '--config.optimizer.warmup_steps=1', '--config.log_every_steps=2',
         '--config.checkpoint_every_steps=2', '--config.num_train_steps=400']
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None and not _finished_steps(emulator, bucket):
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  _, err = proc.communicate()
  finished = _finished_steps(emulator, bucket)
  assert finished, err[-3000:]
  saved = finished[-1]
  assert 2 <= saved < 400
  result = subprocess.run(cmd[:-1] + [f'--config.num_train_steps={saved + 2}'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from checkpoint at step {saved}' in result.stderr
  assert f'gs://{bucket}/documents: {NUM_TYPES} classes, {2 * NUM_TYPES} images' in result.stderr
  names = emulator.list_objects(bucket, 'run/')
  assert f'run/checkpoints/{saved + 2}/commit_success.txt' in names
  assert f'run/checkpoints/{saved + 2}/default/manifest.ocdbt' in names
  assert 'run/config.json' in names
  assert any(n.startswith('run/events.out.tfevents.') for n in names), names
  from tools.read_scalars import read_scalars  # pylint: disable=import-outside-toplevel
  loss_steps = [s for s, _ in read_scalars(f'gs://{bucket}/run')['train/loss']]
  assert saved in loss_steps and saved + 2 in loss_steps  # both runs logged to the bucket
  assert not any('.tmp' in n for n in names), names
  # Nothing went to a local 'gs:' folder (os.path.abspath on the URL).
  assert not os.path.exists(os.path.join(REPO, 'gs:'))
  # The class list the checkpoints were trained with is kept beside them; a new type folder
  # would shift no label here (it sorts last) but changes the head: refused before training.
  import file_io  # pylint: disable=import-outside-toplevel
  stored = file_io.read_json(f'gs://{bucket}/run/classes.json')['sources']
  assert stored == [{'source': 'folder', 'first_label': 0, 'num_classes': NUM_TYPES,
                     'names': [f'type_{t:02d}' for t in range(NUM_TYPES)]}]
  emulator.upload(bucket, 'documents/type_16/scan_0.png', _png(99))
  c = tiny_config(**{'data.sources': ('folder',), 'data.folder.root': f'gs://{bucket}/documents',
                     'eval_sets': (), 'num_train_steps': saved + 4})
  with pytest.raises(LabelsChanged, match=r"maps labels differently from the checkpoint at step "
                     rf"{saved + 2} .*had 16 classes, now 17 \(added: \['type_16'\]"):
    train.train_and_evaluate(c, f'gs://{bucket}/run')  # in this process: no second start-up
