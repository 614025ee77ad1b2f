"""file_io's gs:// branch, the rendered-page and PDF caches, against a GCS emulator on localhost
(tests/gcs_emulator.py; no mocks). `python main.py --workdir=gs://...` itself, killed and resumed
from the bucket, is tests/test_smoke_run.py."""
import io

import numpy as np
import pytest
from PIL import Image


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
