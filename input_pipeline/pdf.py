"""PDF pages as documents: every page of every PDF in a folder tree is a class of its own.

Users have their document types as PDFs, and any machine has PDFs to pretrain on. Pages are
rendered once with pypdfium2 (PDFium) at `render_side` px on the longest side and cached as PNG
files (written atomically; a PDF changed since is re-rendered, keyed by path, size and mtime),
then read like a folder of images (folders.file_source): same augmentation, sharding, and
index-based, exactly resumable order.

label_mode: 'page' (each page a class), 'view' (each page's 24 views, as in folders.py) or
'document' (each PDF file a class, all its pages its views).

Rendering is sequential in this process: PDFium is not thread-safe, and the cost is paid once
per PDF (about 10-30 ms a page at 256 px).

The PDF folder and the page cache may each be local or gs://... (file_io); a gs:// PDF is read
into memory to render it.
"""
import hashlib
import os

from absl import logging
import numpy as np
from PIL import Image

import file_io
from input_pipeline import folders
from input_pipeline import image_io

LABEL_MODES = ('page', 'view', 'document')


def _cache_key(path, render_side):
  if file_io.is_remote(path):
    st = file_io._gfile().stat(path)  # pylint: disable=protected-access
    size, mtime = st.length, st.mtime_nsec
  else:
    st = os.stat(path)
    size, mtime = st.st_size, st.st_mtime_ns
  key = f'{file_io.resolve(path)}|{size}|{mtime}|{render_side}'
  return hashlib.sha1(key.encode()).hexdigest()[:20]


def _atomic_save_png(img, path):
  file_io.write_with_atomic(path, lambda tmp: img.save(tmp, 'PNG'))


def unreadable_reason(path):
  """Why PDFium refused `path`, read from the file itself: PDFium's own reason is a process-wide
  last-error code that can be stale (another file's 'Incorrect password', or 'Success')."""
  import mmap  # pylint: disable=g-import-not-at-top
  if file_io.is_remote(path):
    data = file_io.read_bytes(path)
    if b'%PDF-' not in data[:1024]:
      return 'not a PDF (no %PDF- header)'
    if data.find(b'/Encrypt') >= 0:
      return 'encrypted PDF (needs a password)'
    return 'damaged PDF (PDFium could not parse it; truncated?)'
  with open(path, 'rb') as f:
    if b'%PDF-' not in f.read(1024):
      return 'not a PDF (no %PDF- header)'
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
      if data.find(b'/Encrypt') >= 0:
        return 'encrypted PDF (needs a password)'
  return 'damaged PDF (PDFium could not parse it; truncated?)'


def render_pdf(path, out_dir, *, render_side, max_pages):
  """Renders the pages of one PDF into out_dir (skipping those already there); page PNG paths.

  Raises ValueError with a one-line reason for an unusable PDF.
  """
  import pypdfium2 as pdfium  # pylint: disable=g-import-not-at-top  (runtime dep of this source only)
  if file_io.getsize(path) == 0:
    raise ValueError('zero-byte file')
  done = file_io.join(out_dir, 'pages.txt')
  if file_io.exists(done):  # complete render from an earlier run
    lines = file_io.read_bytes(done).decode().splitlines()
    return [file_io.join(out_dir, line.strip()) for line in lines if line.strip()]
  try:
    doc = pdfium.PdfDocument(file_io.read_bytes(path) if file_io.is_remote(path) else path)
  except pdfium.PdfiumError:
    raise ValueError(unreadable_reason(path)) from None
  try:
    n = len(doc)
    if n == 0:
      raise ValueError('PDF without pages')
    file_io.makedirs(out_dir)
    names = []
    for i in range(min(n, max_pages) if max_pages else n):
      page = doc[i]
      w, h = page.get_size()
      if w <= 0 or h <= 0:
        continue
      try:
        img = page.render(scale=render_side / max(w, h)).to_pil().convert('RGB')
      except pdfium.PdfiumError as e:
        logging.warning('pdf %s page %d not rendered: %s', path, i, e)
        continue
      name = f'page_{i:05d}.png'
      _atomic_save_png(img, file_io.join(out_dir, name))
      names.append(name)
  finally:
    doc.close()
  if not names:
    raise ValueError('no renderable page')
  file_io.write_bytes_atomic(done, ('\n'.join(names) + '\n').encode())
  return [file_io.join(out_dir, name) for name in names]


def scan_pdfs(root, *, cache_dir, render_side, label_mode='page', max_pages=0):
  """Renders (or finds cached) pages. Returns (page paths, labels int64, num_classes, report)."""
  if label_mode not in LABEL_MODES:
    raise image_io.DataError(f'pdf label_mode={label_mode!r}: expected one of {LABEL_MODES}')
  if not file_io.isdir(root):
    raise image_io.DataError(f'pdf source: {root!r} is not a directory. Set '
                             'config.data.pdf.root to a folder of PDF files (sub-folders are '
                             'searched too).')
  pdfs = [p for p in folders.list_files(root) if p.lower().endswith(".pdf")]
  if not pdfs:
    raise image_io.DataError(f'pdf source: no .pdf files under {root!r}. Put PDF files in it.')
  pages, doc_ids, skipped, page_keys, doc_keys = [], [], [], [], []
  for rel in pdfs:
    path = file_io.join(root, rel)
    try:
      out = render_pdf(path, file_io.join(cache_dir, _cache_key(path, render_side)),
                       render_side=render_side, max_pages=max_pages)
    except (ValueError, OSError) as e:
      skipped.append((rel, str(e)))
      continue
    doc_ids += [len(set(doc_ids))] * len(out)
    pages += out
    doc_keys.append(rel)
    page_keys += [f'{rel}#{os.path.basename(p)}' for p in out]
  if not pages:
    raise image_io.DataError(f'pdf source: none of the {len(pdfs)} PDFs under {root!r} could be '
                             f'rendered (e.g. {skipped[0][0]}: {skipped[0][1]}).')
  if label_mode == 'document':
    labels = np.asarray(doc_ids, np.int64)
  else:
    labels = np.arange(len(pages), dtype=np.int64)
  n_classes = int(labels.max()) + 1
  if label_mode == 'view':
    n_classes *= folders.NUM_VIEWS
  report = folders.ScanReport(root, n_classes, len(pages), sorted(skipped),
                              doc_keys if label_mode == 'document' else page_keys)
  return pages, labels, n_classes, report


def default_cache_dir():
  return os.path.join(os.path.expanduser('~'), '.cache', 'doc_embed', 'pdf_pages')


def make_source(source_config, *, image_size, seed, process_index=0, process_count=1,
                start_index=0, augment_config=None, classes=None, teacher_size=0):
  """The 'pdf' source: (dataset of {'image': uint8 [S, S, 3], 'label': int32}, num_classes).

  source_config: root, label_mode, cache_dir ('' -> ~/.cache/doc_embed/pdf_pages),
  render_side (0 -> 2 * image_size), max_pages (per PDF, 0: all).
  classes: a list that, when given, receives the class names in label order ('<pdf>#page_00003.png',
  or the PDF's path with label_mode 'document'; with 'view' each page stands for its 24 views).
  teacher_size: see folders.file_source.
  """
  render_side = int(source_config.get('render_side', 0) or 2 * image_size)
  label_mode = source_config.get('label_mode', 'page')
  pages, labels, num_classes, report = scan_pdfs(
      source_config.root, cache_dir=source_config.get('cache_dir', '') or default_cache_dir(),
      render_side=render_side, label_mode=label_mode,
      max_pages=int(source_config.get('max_pages', 0)))
  logging.info('pdf source %s', report.summary())
  if classes is not None:
    classes.extend(report.class_names)
  return folders.file_source(pages, labels, num_classes, source_config, image_size=image_size,
                             seed=seed, process_index=process_index, process_count=process_count,
                             start_index=start_index, augment_config=augment_config,
                             views=(label_mode == 'view'), teacher_size=teacher_size)
