"""ImageNet source on tfds.testing.mock_data: one class per image, resumable, split by process."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import default
from input_pipeline import image_io
from input_pipeline import imagenet

N = 12


def _cfg(**kw):
  c = default.get_config().data.imagenet_per_image
  c.shuffle_buffer, c.num_examples = 8, N
  c.update(kw)
  return c


def _take(ds, n):
  return list(ds.take(n).as_numpy_iterator())


def test_one_class_per_image_resumable():
  aug = default.get_config().data.augment
  with tfds.testing.mock_data(num_examples=N):
    ds, n = imagenet.make_source(_cfg(keep_original_label=True), image_size=32, seed=1,
                                 augment_config=aug)
    full = _take(ds, 2 * N + 4)
    resumed, _ = imagenet.make_source(_cfg(keep_original_label=True), image_size=32, seed=1,
                                      start_index=N + 3, augment_config=aug)
    tail = _take(resumed, N + 1)
  assert n == N
  labels = [int(x['label']) for x in full]
  assert sorted(labels[:N]) == list(range(N)) and sorted(labels[N:2 * N]) == list(range(N))
  assert labels[:N] != labels[N:2 * N]   # each epoch has its own order
  assert all(0 <= x['original_label'] < 1000 for x in full)
  assert full[0]['image'].shape == (32, 32, 3)
  for a, b in zip(full[N + 3:], tail):
    assert a['label'] == b['label']
    np.testing.assert_array_equal(a['image'], b['image'])


def test_processes_read_disjoint_ranges_and_original_labels():
  with tfds.testing.mock_data(num_examples=N):
    parts = [imagenet.make_source(_cfg(), image_size=16, seed=0, process_index=p,
                                  process_count=3)[0] for p in range(3)]
    seen = [set(int(x['label']) for x in _take(ds, N // 3)) for ds in parts]
    _, n_orig = imagenet.make_source(_cfg(label_mode='original'), image_size=16, seed=0)
  assert seen == [set(range(0, 4)), set(range(4, 8)), set(range(8, 12))]
  assert imagenet.process_range(imagenet.NUM_TRAIN_IMAGES, 63, 64)[1] == 1_281_167
  assert n_orig == 1000


def test_missing_dataset_is_one_clear_error(tmp_path):
  with pytest.raises(image_io.DataError, match='tfds build imagenet2012'):
    imagenet.make_source(_cfg(data_dir=str(tmp_path), num_examples=0), image_size=16, seed=0)
