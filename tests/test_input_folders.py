"""Folder source: labels per mode, every kind of bad file, clear errors, resumable order."""
import io
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from configs import default
from input_pipeline import folders
from input_pipeline import image_io


def _page(seed, size=(60, 80), mode='RGB'):
  """A distinct little 'document': random blocks on white."""
  rng = np.random.default_rng(seed)
  a = np.full((size[1], size[0], 3), 255, np.uint8)
  for _ in range(6):
    y, x = rng.integers(0, size[1] - 8), rng.integers(0, size[0] - 8)
    a[y:y + 8, x:x + rng.integers(4, 30)] = rng.integers(0, 200, 3)
  return Image.fromarray(a).convert(mode) if mode != 'RGB' else Image.fromarray(a)


def _jpeg_bytes(img, **kw):
  buf = io.BytesIO()
  img.save(buf, 'JPEG', **kw)
  return buf.getvalue()


def make_tree(root, with_bad=True):
  """root/<type>/..: 3 types, a nested sub-label, and (with_bad) every bad kind of file.

  Returns {relative path: expected skip reason fragment} of the files that must be skipped.
  """
  os.makedirs(os.path.join(root, 'invoice'))
  os.makedirs(os.path.join(root, 'passport', 'p1'))
  os.makedirs(os.path.join(root, 'passport', 'p2'))
  os.makedirs(os.path.join(root, 'receipt'))
  _page(0).save(os.path.join(root, 'invoice', 'a.png'))
  _page(1).save(os.path.join(root, 'invoice', 'b.jpg'))
  _page(2).save(os.path.join(root, 'passport', 'p1', 'c.png'))
  _page(3).save(os.path.join(root, 'passport', 'p2', 'd.png'))
  _page(4).save(os.path.join(root, 'receipt', 'reçu été.png'))  # non-ASCII, space
  if not with_bad:
    return {}
  r = os.path.join(root, 'receipt')
  # Usable after normalisation: grayscale, RGBA, CMYK, 16-bit, palette, EXIF-rotated.
  _page(5, mode='L').save(os.path.join(r, 'gray.png'))
  _page(6, mode='RGBA').save(os.path.join(r, 'rgba.png'))
  _page(7).convert('CMYK').save(os.path.join(r, 'cmyk.jpg'))
  a16 = (np.asarray(_page(8).convert('L'), np.uint16) * 257)
  Image.fromarray(a16).save(os.path.join(r, 'sixteen.png'))
  _page(9, mode='P').save(os.path.join(r, 'palette.png'))
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation: rotate 90 CW to view
  _page(10, size=(40, 90)).save(os.path.join(r, 'exif.jpg'), exif=exif.tobytes())
  # Unusable: zero-byte, non-image, truncated, corrupt, decompression bomb, stray file at root.
  open(os.path.join(r, 'empty.jpg'), 'wb').close()
  with open(os.path.join(r, 'notes.png'), 'w') as f:
    f.write('this is not an image\n')
  data = _jpeg_bytes(_page(11, size=(200, 200)))
  with open(os.path.join(r, 'truncated.jpg'), 'wb') as f:
    f.write(data[:len(data) // 2])
  with open(os.path.join(r, 'corrupt.png'), 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + bytes(range(256)) * 4)
  # A bomb: tiny file, huge declared size (1-bit PNG of 20000 x 20000).
  Image.new('1', (20000, 20000)).save(os.path.join(r, 'bomb.png'))
  with open(os.path.join(r, 'readme.txt'), 'w') as f:
    f.write('x')
  _page(12).save(os.path.join(root, 'stray.png'))
  return {'receipt/empty.jpg': 'zero-byte', 'receipt/notes.png': 'not a readable image',
          'receipt/truncated.jpg': 'truncated', 'receipt/corrupt.png': '',
          'receipt/bomb.png': 'too large', 'receipt/readme.txt': 'extension',
          'stray.png': 'type folder'}


def test_scan_skips_and_normalises_every_bad_kind(tmp_path):
  expected = make_tree(str(tmp_path))
  paths, labels, num_classes, report = folders.scan_folder(
      str(tmp_path), label_mode='type', max_pixels=50_000_000)
  skipped = dict(report.skipped)
  assert set(skipped) == set(expected), report.summary()
  for rel, fragment in expected.items():
    assert fragment in skipped[rel], (rel, skipped[rel])
  assert num_classes == 3 and report.num_images == 11
  assert '7 skipped' in report.summary()
  by_name = dict(zip([os.path.basename(p) for p in paths], labels))
  assert by_name['c.png'] == by_name['d.png'] != by_name['a.png']
  for p in paths:
    with open(p, 'rb') as f:
      img = image_io.load_rgb(f.read(), max_side=64)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert max(img.shape[:2]) <= 64
  # EXIF orientation applied: stored 40 wide x 90 high, rotated on load to 90 x 40.
  with open(os.path.join(str(tmp_path), 'receipt', 'exif.jpg'), 'rb') as f:
    assert image_io.load_rgb(f.read()).shape[:2] == (40, 90)
  # RGBA composites on white paper, 16-bit keeps its range.
  with open(os.path.join(str(tmp_path), 'receipt', 'sixteen.png'), 'rb') as f:
    assert image_io.load_rgb(f.read()).max() == 255


def test_label_modes(tmp_path):
  make_tree(str(tmp_path), with_bad=False)
  counts = {m: folders.scan_folder(str(tmp_path), label_mode=m)[2] for m in folders.LABEL_MODES}
  assert counts == {'type': 3, 'leaf': 4, 'image': 5, 'view': 5 * 24}


def test_clear_errors(tmp_path):
  with pytest.raises(image_io.DataError, match='not a directory'):
    folders.scan_folder(str(tmp_path / 'missing'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(image_io.DataError, match='no images'):
    folders.scan_folder(str(tmp_path / 'empty'))
  make_tree(str(tmp_path / 't'), with_bad=False)
  (tmp_path / 't' / 'contract').mkdir()
  (tmp_path / 't' / 'contract' / 'x.jpg').write_bytes(b'')
  with pytest.raises(image_io.DataError, match="contract"):
    folders.scan_folder(str(tmp_path / 't'))


def test_views_are_distinct_and_correct():
  img = tf.constant(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3))
  views = [folders.apply_view(img, tf.constant(v)).numpy() for v in range(folders.NUM_VIEWS)]
  assert len({v.tobytes() + bytes(v.shape) for v in views}) == folders.NUM_VIEWS
  np.testing.assert_array_equal(views[1], img.numpy()[:2])            # top half
  np.testing.assert_array_equal(views[3], img.numpy()[:, ::-1])       # flipped
  np.testing.assert_array_equal(views[6], np.rot90(img.numpy(), 1))   # rotated 90


def _take(ds, n):
  return [{k: v for k, v in x.items()} for x in ds.take(n).as_numpy_iterator()]


def test_stream_is_resumable_and_sharded(tmp_path):
  make_tree(str(tmp_path), with_bad=False)
  data = default.get_config().data
  cfg, aug = data.folder, data.augment
  cfg.root, cfg.label_mode = str(tmp_path), 'image'
  kw = dict(image_size=32, seed=3, augment_config=aug)
  ds, n = folders.make_source(cfg, process_index=0, process_count=1, **kw)
  assert n == 5
  full = _take(ds, 12)
  assert sorted(x['label'] for x in full[:5]) == list(range(5))  # an epoch covers each once
  assert [x['label'] for x in full[:5]] != [x['label'] for x in full[5:10]]  # reshuffled
  resumed, _ = folders.make_source(cfg, process_index=0, process_count=1, start_index=7, **kw)
  for a, b in zip(full[7:], _take(resumed, 5)):
    assert a['label'] == b['label']
    np.testing.assert_array_equal(a['image'], b['image'])
  assert full[0]['image'].shape == (32, 32, 3) and full[0]['image'].dtype == np.uint8
  # Two processes: disjoint items, together all of them (no augmentation: faster to build).
  aug.enabled = False
  shards = [set(x['label'] for x in _take(
      folders.make_source(cfg, process_index=p, process_count=2, **kw)[0], 6)) for p in (0, 1)]
  assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(5))


def test_class_list_guards_a_resume_against_relabelled_data(tmp_path):
  """train.py keeps the class list beside the checkpoints (workdir.write_classes) and compares
  it at a resume: a type folder added, removed or renamed would shift labels silently.
  (tests/test_gcs.py runs it through main.py.)"""
  import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from errors import LabelsChanged  # pylint: disable=import-outside-toplevel
  data_root, run = tmp_path / 'docs', str(tmp_path / 'run')
  make_tree(str(data_root), with_bad=False)

  def class_list():  # as train_data.create_train_iterator gives it for synthetic + folder
    _, _, n, report = folders.scan_folder(str(data_root), verify='header')
    return [{'source': 'synthetic', 'first_label': 0, 'num_classes': 4,
             'names': [f'template {i}' for i in range(4)]},
            {'source': 'folder', 'first_label': 4, 'num_classes': n, 'names': report.class_names}]

  assert class_list()[1]['names'] == ['invoice', 'passport', 'receipt']
  workdir_lib.write_classes(run, class_list())
  workdir_lib.check_classes(run, class_list(), step=10)  # same data: resumes
  os.rename(data_root / 'passport', data_root / 'permit')  # same count, other classes
  with pytest.raises(LabelsChanged, match=r"label 5 was 'passport', now 'permit'") as e:
    workdir_lib.check_classes(run, class_list(), step=10)
  assert '\n' not in str(e.value)
  os.makedirs(data_root / 'visa')
  _page(10).save(data_root / 'visa' / 'v.png')
  with pytest.raises(LabelsChanged, match=r"had 3 classes, now 4 \(added: \['permit', 'visa'\]"):
    workdir_lib.check_classes(run, class_list(), step=10)
  workdir_lib.check_classes(run, class_list(), step=0)  # a fresh start is not a resume
