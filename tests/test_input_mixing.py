"""Mixing: exact per-step quotas, disjoint label ranges, resumable from any step."""
import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import image_io
from input_pipeline import mixing


def _source(tag, num_classes, start):
  """Stream whose element e has label e % num_classes and 'tag' = source id, 'e' = e."""
  ds = tf.data.Dataset.range(start, 2**62)
  return ds.map(lambda e: {'image': tf.fill([2, 2, 3], tf.cast(tag, tf.uint8)),
                           'label': tf.cast(e % num_classes, tf.int32), 'e': e})


def _batches(weights, classes, batch, start_step, n_steps, seed=0):
  starts = mixing.consumed_before(weights, batch, start_step)
  srcs = [_source(i, c, s) for i, (c, s) in enumerate(zip(classes, starts))]
  ds, total = mixing.mix(srcs, classes, weights, local_batch=batch, start_step=start_step,
                         seed=seed)
  return list(ds.batch(batch, drop_remainder=True).take(n_steps).as_numpy_iterator()), total


def test_quotas_offsets_and_resume():
  weights, classes, batch = (0.6, 0.3, 0.1), (5, 7, 11), 10
  full, total = _batches(weights, classes, batch, 0, 40)
  assert total == 23
  tags = np.stack([b['image'][:, 0, 0, 0] for b in full])
  counts = np.stack([(tags == s).sum(1) for s in range(3)], 1)
  assert (counts.sum(1) == batch).all()
  # Over 40 steps the shares are the weights exactly (fractions accumulate, none is lost).
  np.testing.assert_array_equal(counts.sum(0), [240, 120, 40])
  labels = np.stack([b['label'] for b in full])
  for s, (lo, hi) in enumerate([(0, 5), (5, 12), (12, 23)]):
    assert ((labels[tags == s] >= lo) & (labels[tags == s] < hi)).all()
    # Each source's stream is consumed in order without gaps.
    np.testing.assert_array_equal(np.sort(np.stack([b['e'] for b in full])[tags == s]),
                                  np.arange(counts[:, s].sum()))
  resumed, _ = _batches(weights, classes, batch, 17, 5)
  for a, b in zip(full[17:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_bad_weights_are_clear_errors():
  with pytest.raises(image_io.DataError, match='positive weight'):
    mixing.quantise_weights((1.0, 0.0), 8)
  with pytest.raises(image_io.DataError, match='batch'):
    mixing.quantise_weights((1.0,) * 6, 4)
  with pytest.raises(image_io.DataError, match='weights'):
    mixing.mix([_source(0, 2, 0)], (2, 3), (1.0,), local_batch=4, start_step=0, seed=0)
  with_view = _source(1, 2, 0).map(lambda ex: dict(ex, view=ex['image']))
  with pytest.raises(image_io.DataError, match="'view'"):
    mixing.mix([_source(0, 2, 0), with_view], (2, 2), (1.0, 1.0), local_batch=4, start_step=0,
               seed=0)


def test_train_iterator_mixes_folder_pdf_and_synthetic(tiny_config, tmp_path):
  """The trainer's entry point with three sources: disjoint ranges, resumable, preview PNG."""
  from PIL import Image
  from input_pipeline import preview, train_data
  rng = np.random.default_rng(0)
  for t in ('a', 'b', 'c'):
    (tmp_path / 'docs' / t).mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(
        tmp_path / 'docs' / t / 'x.png')
  (tmp_path / 'pdfs').mkdir()
  pages = [Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)) for _ in range(2)]
  pages[0].save(tmp_path / 'pdfs' / 'p.pdf', save_all=True, append_images=pages[1:])
  c = tiny_config(**{'data.sources': ('folder', 'synthetic', 'pdf'),
                     'data.weights': (0.5, 0.25, 0.25), 'data.folder.root': str(tmp_path / 'docs'),
                     'data.pdf.root': str(tmp_path / 'pdfs'),
                     'data.pdf.cache_dir': str(tmp_path / 'cache'),
                     'data.augment.enabled': False})  # augmentation is tested on its own
  it, n = train_data.create_train_iterator(c, start_step=0)
  assert n == 3 + 16 + 2
  batches = [next(it) for _ in range(3)]
  labels = np.concatenate([b['label'] for b in batches])
  assert batches[0]['image'].shape == (16, 32, 32, 3)
  assert ((labels >= 0) & (labels < n)).all()
  assert ((labels < 3).sum(), (labels >= 19).sum()) == (24, 12)  # the weights, exactly
  resumed, _ = train_data.create_train_iterator(c, start_step=2)
  r = next(resumed)
  np.testing.assert_array_equal(r['label'], batches[2]['label'])
  np.testing.assert_array_equal(r['image'], batches[2]['image'])
  out = tmp_path / 'grid.png'
  assert preview.write_preview(c, str(out), rows=2, cols=4) == n
  assert Image.open(out).size == (4 * 34 + 2, 2 * 34 + 2)


def test_every_source_gives_the_teacher_its_clean_view(tiny_config, tmp_path):
  """Distillation over a mix: each example carries 'teacher_image', the un-augmented view of its
  own source at the teacher's size (folder: the whole file; paperwork: the clean page; synthetic:
  the template), while 'image' is augmented. Before, a mix dropped the view for every source."""
  from PIL import Image
  from input_pipeline import augment, rendered, train_data
  colours = {'a': 30, 'b': 120, 'c': 210}
  for t, v in colours.items():
    (tmp_path / 'docs' / t).mkdir(parents=True)
    Image.fromarray(np.full((40, 30, 3), v, np.uint8)).save(tmp_path / 'docs' / t / 'x.png')
  c = tiny_config(**{'data.sources': ('folder', 'paperwork', 'synthetic'),
                     'data.weights': (0.5, 0.25, 0.25), 'data.folder.root': str(tmp_path / 'docs'),
                     'data.paperwork.cache_dir': str(tmp_path / 'pw'),
                     'data.paperwork.render_workers': 1, 'distill.enabled': True,
                     'distill.teacher': 'unused', 'distill.image_size': 24})
  it, n = train_data.create_train_iterator(c, start_step=0)
  batch = next(it)
  assert batch['teacher_image'].shape == (16, 24, 24, 3) and batch['image'].shape[1] == 32
  labels, views = batch['label'], batch['teacher_image']
  folder = labels < 3
  for label, view in zip(labels[folder], views[folder]):
    assert (view == colours['abc'[label]]).all()  # the file as it is, not its augmentation
  pw = c.data.paperwork
  docs = rendered.RenderedDocuments(rendered.train_templates(pw), pw, 32)

  def clean_pages(template):  # each copy's page cut out of its canvas, at the teacher's size
    # pylint: disable=protected-access
    pages = []
    for k in range(pw.copies):
      x0, y0, x1, y1 = np.round(docs._boxes[template, k].numpy()).astype(int)
      page = docs._images[template, k].numpy()[y0:y1, x0:x1]
      pages.append(augment.resize_only(page, 24).numpy())
    return pages

  paperwork = (labels >= 3) & (labels < 3 + docs.num_classes)
  assert paperwork.any()
  for template, view in zip(labels[paperwork] - 3, views[paperwork]):
    assert any((view == page).all() for page in clean_pages(template))
  assert n == 3 + docs.num_classes + 16
