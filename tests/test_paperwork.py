"""Rendered paperwork: pages, the render cache, captures, and the 'paperwork' training source."""
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from errors import DataError
from input_pipeline import captures
from input_pipeline import fonts
from input_pipeline import paperwork
from input_pipeline import rendered


def _cfg(tmp_path, **kw):
  c = ml_collections.ConfigDict(dict(
      seed=3, copies=2, template_size=64, capture_strength=1.0, cache_dir=str(tmp_path / 'cache'),
      render_workers=1, num_templates=6, heldout_templates=3, heldout_captures=2))
  c.update(kw)
  return c


def test_pages_are_paper_with_text_and_deterministic():
  for t in range(12):
    img, (x0, y0, x1, y1) = paperwork.render(t, 1, 7, 96)
    again, _ = paperwork.render(t, 1, 7, 96)
    np.testing.assert_array_equal(img, again)
    page = img[y0:y1, x0:x1].astype(np.float32)
    assert page.shape[0] > 10 and page.shape[1] > 10
    kind = paperwork.template_style(t, 7)['kind']
    if kind not in ('id_card', 'passport'):  # cards are colourful; paper is light with dark ink
      assert np.median(page) > 180, (t, kind)
    assert page.min() < 120, (t, kind)  # there is ink on it


def test_copies_share_the_template_and_templates_differ():
  size = 96
  blank_or_a, _ = paperwork.render(0, 0, 7, size)
  filled, _ = paperwork.render(0, 1, 7, size)
  other, _ = paperwork.render(1, 1, 7, size)
  d_copy = np.abs(blank_or_a.astype(float) - filled).mean()
  d_other = np.abs(other.astype(float) - filled).mean()
  assert d_copy > 0  # a copy has its own contents
  assert d_other > d_copy  # another document differs more than another copy of this one


def test_issuers_are_shared_in_groups():
  a, b = paperwork.template_style(0, 7), paperwork.template_style(1, 7)
  c = paperwork.template_style(paperwork.ISSUER_GROUP, 7)
  assert (a['name'], a['accent'], a['body']) == (b['name'], b['accent'], b['body'])
  assert a['name'] != c['name']


def test_missing_fonts_is_one_line(monkeypatch):
  fonts.font_files.cache_clear()
  monkeypatch.setitem(fonts.FONT_PACKAGES, 'hand', ('fontpkg_not_installed_anywhere',))
  monkeypatch.setitem(fonts._PIP_NAMES, 'fontpkg_not_installed_anywhere', 'fontpkg-nope')  # pylint: disable=protected-access
  with pytest.raises(DataError, match=r'pip install fontpkg-nope') as e:
    fonts.font_files()
  assert '\n' not in str(e.value)
  fonts.font_files.cache_clear()


def test_render_cache_reused_rebuilt_when_corrupt_or_foreign(tmp_path, caplog):
  cfg = _cfg(tmp_path)
  ids = np.arange(4)
  images, boxes, kept, _ = rendered.bank(ids, cfg.copies, cfg.seed, cfg.template_size, cfg.cache_dir, 1)
  files = os.listdir(cfg.cache_dir)
  assert len(files) == 1 and files[0].startswith('paperwork-')
  path = os.path.join(cfg.cache_dir, files[0])
  mtime = os.path.getmtime(path)
  again = rendered.bank(ids, cfg.copies, cfg.seed, cfg.template_size, cfg.cache_dir, 1)
  np.testing.assert_array_equal(again[0], images)
  assert os.path.getmtime(path) == mtime  # read, not rewritten
  # Truncated: rendered again, same pixels, file replaced.
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  third = rendered.bank(ids, cfg.copies, cfg.seed, cfg.template_size, cfg.cache_dir, 1)
  np.testing.assert_array_equal(third[0], images)
  assert rendered.load_bank(path, rendered.bank_key(ids, cfg.copies, cfg.seed, cfg.template_size))
  # Another generator's file under this name (a foreign key): not reused.
  assert rendered.load_bank(path, 'someone-else') is None
  # No temp files left behind.
  assert [f for f in os.listdir(cfg.cache_dir) if f.endswith('.tmp')] == []


def test_template_that_cannot_be_laid_out_is_skipped_and_counted(tmp_path, monkeypatch):
  real = paperwork.render

  def render(template_id, copy, seed, size):
    if template_id == 2:
      raise ValueError('no room for the table')
    return real(template_id, copy, seed, size)

  monkeypatch.setattr(paperwork, 'render', render)
  cfg = _cfg(tmp_path)
  docs = rendered.RenderedDocuments(np.arange(5), cfg, 32)
  assert docs.num_classes == 4
  assert list(docs.template_ids) == [0, 1, 3, 4]
  assert docs.failures[0][0] == 2 and 'no room' in docs.failures[0][1]


def test_captures_deterministic_and_corners_placed():
  page, box = paperwork.render(0, 1, 7, 80)
  outs = [captures.capture(page, np.float32(box), tf.constant([5, i], tf.int64), 48) for i in range(40)]
  img, corners = captures.capture(page, np.float32(box), tf.constant([5, 0], tf.int64), 48)
  np.testing.assert_array_equal(img.numpy(), outs[0][0].numpy())
  means = []
  for im, c in outs:
    assert im.dtype == tf.uint8 and im.shape == (48, 48, 3)
    c = c.numpy()
    # clockwise from top-left: the top edge runs right, the left edge runs down
    assert c[1, 0] > c[0, 0] and c[3, 1] > c[0, 1]
    means.append(float(tf.reduce_mean(tf.cast(im, tf.float32))))
  assert len({round(m, 3) for m in means}) > 30  # each seed its own capture
  # Some captures are the clean page filling the frame (what users register).
  full = [c.numpy() for _, c in outs if np.allclose(c.numpy(), [[0, 0], [48, 0], [48, 48], [0, 48]])]
  assert full


def test_paperwork_source_trains_resumes_and_evaluates(tiny_config, tmp_path):
  from evaluation import evaluators  # pylint: disable=import-outside-toplevel
  from input_pipeline import train_data  # pylint: disable=import-outside-toplevel
  c = tiny_config(**{'data.sources': ('paperwork',), 'data.weights': (1.0,),
                     'eval_sets': ('paperwork_heldout', f'folder:{tmp_path}/absent'),
                     'eval_missing_folders': 'skip'})
  c.data.paperwork.update(_cfg(tmp_path).to_dict())
  it, n = train_data.create_train_iterator(c, start_step=0)
  assert n == 6
  first = [next(it) for _ in range(3)]
  assert first[0]['image'].shape == (16, 32, 32, 3)
  assert first[0]['label'].min() >= 0 and first[0]['label'].max() < 6
  resumed, _ = train_data.create_train_iterator(c, start_step=2)
  np.testing.assert_array_equal(next(resumed)['image'], first[2]['image'])
  sets = evaluators.build_eval_sets(c)
  assert [s[0] for s in sets] == ['paperwork_heldout']  # the absent folder is left out
  _, images, labels, is_register = sets[0]
  assert images.shape == (6, 32, 32, 3) and is_register.sum() == 3
