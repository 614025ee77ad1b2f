"""PDF source: pages rendered with PDFium, cached atomically, bad PDFs skipped and named."""
import os

import numpy as np
from PIL import Image
import pytest

from configs import default
from input_pipeline import image_io
from input_pipeline import pdf


def _write_pdf(path, n_pages, seed):
  rng = np.random.default_rng(seed)
  pages = [Image.fromarray(rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)) for _ in range(n_pages)]
  pages[0].save(path, save_all=True, append_images=pages[1:])


def _tree(root):
  os.makedirs(os.path.join(root, 'sub'))
  _write_pdf(os.path.join(root, 'a.pdf'), 3, 0)
  _write_pdf(os.path.join(root, 'sub', 'b.pdf'), 2, 1)
  open(os.path.join(root, 'zero.pdf'), 'wb').close()
  with open(os.path.join(root, 'broken.pdf'), 'wb') as f:
    f.write(b'%PDF-1.4\n garbage that is no PDF')
  data = open(os.path.join(root, 'a.pdf'), 'rb').read()
  with open(os.path.join(root, 'truncated.pdf'), 'wb') as f:
    f.write(data[:len(data) // 3])


def test_pages_render_cache_and_skip(tmp_path):
  root, cache = str(tmp_path / 'pdfs'), str(tmp_path / 'cache')
  _tree(root)
  pages, labels, n, report = pdf.scan_pdfs(root, cache_dir=cache, render_side=64)
  assert n == 5 and len(pages) == 5 and list(labels) == list(range(5))
  skipped = dict(report.skipped)
  assert set(skipped) == {'zero.pdf', 'broken.pdf', 'truncated.pdf'}, report.summary()
  assert 'zero-byte' in skipped['zero.pdf']
  img = np.asarray(Image.open(pages[0]))
  assert max(img.shape[:2]) == 64 and img.shape[2] == 3
  # Rendered pages differ (each page is its own class) and the cache is reused.
  assert not np.array_equal(img, np.asarray(Image.open(pages[1])))
  mtime = os.path.getmtime(pages[0])
  again, _, _, _ = pdf.scan_pdfs(root, cache_dir=cache, render_side=64)
  assert again == pages and os.path.getmtime(pages[0]) == mtime
  assert not [f for _, _, fs in os.walk(cache) for f in fs if '.tmp' in f]
  _, doc_labels, n_docs, _ = pdf.scan_pdfs(root, cache_dir=cache, render_side=64,
                                          label_mode='document')
  assert n_docs == 2 and list(doc_labels) == [0, 0, 0, 1, 1]


def test_source_stream_and_errors(tmp_path):
  root = str(tmp_path / 'pdfs')
  _tree(root)
  data = default.get_config().data
  cfg, aug = data.pdf, data.augment
  cfg.root, cfg.cache_dir, cfg.label_mode = root, str(tmp_path / 'c'), 'view'
  aug.enabled = False
  ds, n = pdf.make_source(cfg, image_size=24, seed=0, augment_config=aug)
  assert n == 5 * 24
  xs = list(ds.take(6).as_numpy_iterator())
  assert all(x['image'].shape == (24, 24, 3) for x in xs)
  assert all(0 <= x['label'] < n for x in xs)
  (tmp_path / 'none').mkdir()
  with pytest.raises(image_io.DataError, match='no .pdf files'):
    pdf.scan_pdfs(str(tmp_path / 'none'), cache_dir=str(tmp_path / 'c'), render_side=32)
  bad = tmp_path / 'bad'
  bad.mkdir()
  (bad / 'x.pdf').write_bytes(b'')
  with pytest.raises(image_io.DataError, match='could be rendered'):
    pdf.scan_pdfs(str(bad), cache_dir=str(tmp_path / 'c'), render_side=32)
