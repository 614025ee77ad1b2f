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


class InputTestTinyImages(tfds.core.GeneratorBasedBuilder):
  """A real, prepared tfds dataset (TFRecords on disk) with imagenet2012's features."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'label': tfds.features.ClassLabel(num_classes=1000),
        'file_name': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(N):
      image = np.full((20 + i, 16, 3), 10 * i, np.uint8)  # height tells the image apart
      yield i, {'image': image, 'label': i % 3, 'file_name': f'{i}.jpeg'}


def test_real_tfrecords_slices_and_global_index(tmp_path):
  """Not mocked: tfds reads TFRecord slices; a label always names the same image."""
  InputTestTinyImages(data_dir=str(tmp_path)).download_and_prepare()
  aug = default.get_config().data.augment
  aug.enabled = False
  cfg = _cfg(data_dir=str(tmp_path), tfds_name='input_test_tiny_images', num_examples=0)
  seen = {}
  for p in range(2):
    ds, n = imagenet.make_source(cfg, image_size=8, seed=0, process_index=p, process_count=2,
                                 augment_config=aug)
    for x in _take(ds, N):  # two local epochs
      assert seen.setdefault(int(x['label']), x['image'].tobytes()) == x['image'].tobytes()
  assert n == N and sorted(seen) == list(range(N))


def test_teacher_view_is_the_whole_image_unaugmented(tmp_path):
  """Distillation: 'teacher_image' is the decoded image stretched to the teacher's size, the
  same every epoch, while 'image' is augmented (each InputTestTinyImages image is flat grey)."""
  InputTestTinyImages(data_dir=str(tmp_path)).download_and_prepare()
  cfg = _cfg(data_dir=str(tmp_path), tfds_name='input_test_tiny_images', num_examples=0)
  ds, _ = imagenet.make_source(cfg, image_size=16, seed=0, teacher_size=24,
                               augment_config=default.get_config().data.augment)
  grey = {}
  for x in _take(ds, 2 * N):
    view = x['teacher_image']
    assert view.shape == (24, 24, 3) and x['image'].shape == (16, 16, 3)
    assert view.min() == view.max() and view.max() % 10 == 0  # the flat file, not a capture
    assert grey.setdefault(int(x['label']), int(view.max())) == view.max()
  assert sorted(grey.values()) == list(range(0, 10 * N, 10))
