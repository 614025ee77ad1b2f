"""Augmentation: every op is wired to its probability, draws are a pure function of the seed."""
import numpy as np
import pytest
import tensorflow as tf

from configs import default
from input_pipeline import augment
from input_pipeline import preview

S = 32


def _identity_config():
  """All ops off and the crop the whole image: the warp alone, which is then a plain resize."""
  a = default.get_config().data.augment
  for k in list(a.keys()):
    if k.endswith('_prob'):
      a[k] = 0.0
  a.crop_min_scale, a.crop_max_ratio = 1.0, 1.0
  return a


def _image():
  rng = np.random.default_rng(0)
  a = np.full((S, S, 3), 230, np.uint8)
  a[4:12, 3:28] = rng.integers(0, 120, 3)
  a[18:26, 6:20] = rng.integers(0, 120, 3)
  return tf.constant(a)


def _run(cfg, seed=(1, 2)):
  return augment.augment_image(_image(), tf.constant(seed, tf.int64), cfg, S).numpy()


def test_identity_warp_keeps_the_image():
  out = _run(_identity_config())
  assert np.abs(out.astype(int) - _image().numpy()).max() <= 1


@pytest.mark.parametrize('op', ['rotate', 'perspective', 'color', 'grayscale', 'sepia',
                                'channel_shuffle', 'invert', 'shadow', 'glare', 'occlusion',
                                'blur', 'noise', 'jpeg'])
def test_each_op_changes_the_image_only_when_drawn(op):
  cfg = _identity_config()
  base = _run(cfg)
  cfg[f'{op}_prob'] = 1.0
  changed = [_run(cfg, (s, 7)) for s in range(3)]
  assert any(np.abs(c.astype(int) - base).max() > 8 for c in changed), op
  np.testing.assert_array_equal(_run(cfg, (0, 7)), changed[0])  # deterministic in the seed
  if op == 'invert':
    np.testing.assert_array_equal(changed[0].astype(int), 255 - base.astype(int))
  if op == 'grayscale':
    assert (changed[0][..., 0] == changed[0][..., 2]).all()


def test_full_augmentation_varies_with_seed_and_keeps_shape():
  cfg = default.get_config().data.augment
  outs = [_run(cfg, (s, 0)) for s in range(4)]
  assert all(o.shape == (S, S, 3) and o.dtype == np.uint8 for o in outs)
  assert len({o.tobytes() for o in outs}) == 4
  big = tf.zeros([900, 700, 3], tf.uint8)  # pre-shrunk before the warp
  assert augment.augment_image(big, tf.constant([0, 1]), cfg, S).shape == (S, S, 3)


def test_preview_grid(tmp_path):
  imgs = np.stack([_run(_identity_config())] * 5)
  grid = preview.make_grid(imgs, np.arange(5), cols=3)
  assert grid.size == (3 * (S + 2) + 2, 2 * (S + 2) + 2)
