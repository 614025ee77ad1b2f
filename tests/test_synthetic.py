import numpy as np

from input_pipeline import synthetic, train_data


def test_templates_are_deterministic_and_distinct():
  a, box = synthetic.render_template(3, 0, seed=1, size=64)
  b, _ = synthetic.render_template(3, 0, seed=1, size=64)
  other, _ = synthetic.render_template(4, 0, seed=1, size=64)
  variant, _ = synthetic.render_template(3, 1, seed=1, size=64)
  assert a.shape == (64, 64, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - other).mean() > 5      # another document type
  assert 0 < np.abs(a.astype(int) - variant).mean()    # same type, other field contents
  x0, y0, x1, y1 = box
  assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64 and max(x1 - x0, y1 - y0) == 64


def test_heldout_templates_are_never_training_classes(tiny_config):
  c = tiny_config()
  assert not set(synthetic.train_templates(c.data.synthetic)) & set(
      synthetic.heldout_templates(c.data.synthetic))
  images, labels, is_register = synthetic.heldout_set(c.data.synthetic, 32)
  assert images.shape == (18, 32, 32, 3) and is_register.sum() == 6
  assert len(set(labels.tolist())) == 6


def test_batches_depend_only_on_step_and_split_over_hosts(tiny_config):
  c = tiny_config()
  it, n = train_data.create_train_iterator(c, start_step=0)
  assert n == 16
  batches = [next(it) for _ in range(3)]
  assert batches[0]['image'].shape == (16, 32, 32, 3)
  resumed, _ = train_data.create_train_iterator(c, start_step=2)
  np.testing.assert_array_equal(next(resumed)['image'], batches[2]['image'])
  # Two hosts each make half of the same global batch.
  halves = [next(train_data.create_train_iterator(c, start_step=1, process_index=p,
                                                  process_count=2)[0]) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h['label'] for h in halves]), batches[1]['label'])
  assert not np.array_equal(batches[0]['image'], batches[1]['image'])


def test_capture_strength_scales_the_degradation():
  """Captures of one template: at strength 0 they differ only by background and the two filled-in
  variants; the spread between captures grows with the strength."""
  docs = {k: synthetic.SyntheticDocuments([3], seed=1, template_size=64, image_size=48,
                                          capture_strength=k) for k in (0.0, 0.5, 1.0)}
  spread = {}
  for k, d in docs.items():
    caps = np.stack([d.example_of(0, i).numpy() for i in range(12)]).astype(np.float32)
    spread[k] = float(np.mean(np.abs(caps - caps.mean(0))))
  assert spread[0.0] < spread[0.5] < spread[1.0], spread


def test_heldout_captures_of_different_classes_do_not_share_a_background(tiny_config):
  """Capture k of every held-out class used to get the same seed, hence the same background and
  pose: different documents then matched better than two captures of one document."""
  c = tiny_config(**{'data.synthetic.heldout_templates': 8, 'data.synthetic.heldout_captures': 2})
  images, labels, _ = synthetic.heldout_set(c.data.synthetic, c.data.image_size)
  first = images[::2]  # capture 0 of each class
  assert len(first) == 8 and (labels[::2] == np.arange(8)).all()
  corners = {tuple(img[0, 0]) for img in first}
  assert len(corners) >= 6, corners
