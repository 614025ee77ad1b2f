"""`python main.py --config=configs/arcface_clip.py:smoke --workdir=gs://...` as a user runs it on a
Cloud TPU slice, here as 2 JAX processes x 4 faked CPU devices against a GCS emulator on localhost:
the production recipe at toy size, every part of it in one run, and a check that each took part;
then stopped and resumed from the bucket. (1 process x 8 devices, as the README's local smoke
command, runs the same program: tests/test_partial_fc_multihost.py and
`tools/two_process_run.py` compare the two.)

The test writes what the config cannot know and passes it on the command line:
- a prepared `imagenet2012` in a TFDS data dir: real TFRecords of tiny images, written by a
  subclass of tfds's own imagenet2012 builder that only swaps the manual download for generated
  images (tfds.testing.mock_data patches tfds inside one process, not in main.py's);
- a document folder tree root/<type>/<image>.png;
- a tiny random CLIP (text + vision, projection 16) saved by `save_pretrained` as safetensors,
  which main.py loads with `from_pretrained`.
"""
import functools
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

from conftest import FAST_COMPILE, REPO, free_port

NUM_IMAGENET = 448   # PartialFC at rate 0.3 over 4 shards must hold a batch of 32's positives
NUM_TYPES = 4        # document folders
STEPS = 8


def write_document_folders(root):
  """root/type_<t>/scan_<i>.png: 3 small pages per type, each type its own layout."""
  rng = np.random.default_rng(0)
  for t in range(NUM_TYPES):
    os.makedirs(os.path.join(root, f'type_{t}'), exist_ok=True)
    for i in range(3):
      page = np.full((48, 36, 3), 235, np.uint8)
      page[4 + 8 * t:10 + 8 * t, 4:32] = 40  # the type's header band
      page += rng.integers(0, 12, page.shape, dtype=np.uint8)
      Image.fromarray(page).save(os.path.join(root, f'type_{t}', f'scan_{i}.png'))


def write_tiny_imagenet(data_dir):
  """A prepared imagenet2012 (tfds's registered builder reads it) of NUM_IMAGENET tiny JPEGs."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as real

  class TinyImagenet2012(real.Builder, skip_registration=True):
    name = 'imagenet2012'  # same name, version and features: written where the real one lives

    @classmethod
    def _get_pkg_dir_path(cls):  # the real builder's metadata (its package folder)
      return real.Builder._get_pkg_dir_path()  # pylint: disable=protected-access

    def _split_generators(self, dl_manager):
      return {'train': self._generate()}

    def _generate(self):
      rng = np.random.default_rng(1)
      for i in range(NUM_IMAGENET):
        image = rng.integers(0, 256, (24 + i % 9, 20 + i % 7, 3), dtype=np.uint8)
        name = f'n{i % 1000:08d}_{i}.JPEG'
        yield name, {'image': image, 'label': i % 1000, 'file_name': name}

  del tfds
  TinyImagenet2012(data_dir=data_dir).download_and_prepare()


def write_tiny_clip(path):
  """A random CLIP with a 2-layer 32 px vision tower, saved as model.safetensors."""
  import jax  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  text = transformers.CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, vocab_size=64,
                                     max_position_embeddings=8)
  vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=32, patch_size=8)
  config = transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                   projection_dim=16)
  model = transformers.FlaxCLIPModel(config, _do_init=False)
  # Parameters filled from their shapes: transformers' own (un-jitted) init takes ~18 s here.
  shapes = jax.eval_shape(functools.partial(model.init_weights, input_shape=model.input_shape),
                          jax.random.PRNGKey(0))
  rng = np.random.default_rng(2)

  def fill(key_path, leaf):
    name = key_path[-1].key
    if name == 'scale':
      return np.ones(leaf.shape, leaf.dtype)
    if name == 'bias':
      return np.zeros(leaf.shape, leaf.dtype)
    return (0.05 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  params = jax.tree_util.tree_map_with_path(fill, shapes)
  model.save_pretrained(path, params=params, safe_serialization=True)


def smoke_command(workdir, clip, docs, tfds_dir):
  """The README's smoke command."""
  return [sys.executable, 'main.py', '--config=configs/arcface_clip.py:smoke',
          f'--workdir={workdir}', f'--config.distill.teacher={clip}',
          f'--config.data.folder.root={docs}',
          f'--config.data.imagenet_per_image.data_dir={tfds_dir}']


@pytest.fixture(scope='module')
def smoke_inputs(tmp_path_factory):
  """(docs, tfds_dir, clip, paperwork_cache): what the config cannot know, written once."""
  root = tmp_path_factory.mktemp('smoke_inputs')
  docs, tfds_dir, clip = (str(root / n) for n in ('docs', 'tfds', 'clip'))
  # The CLIP is written by a second process meanwhile (its imports alone take seconds).
  clip_writer = subprocess.Popen(
      [sys.executable, '-c', f'import test_smoke_run as t; t.write_tiny_clip({clip!r})'],
      cwd=os.path.dirname(os.path.abspath(__file__)), env=dict(os.environ, PYTHONPATH=REPO),
      stderr=subprocess.PIPE, text=True)
  write_document_folders(docs)
  write_tiny_imagenet(tfds_dir)
  assert clip_writer.wait(timeout=120) == 0, clip_writer.stderr.read()[-3000:]
  assert sorted(os.listdir(clip)) == ['config.json', 'model.safetensors']
  return docs, tfds_dir, clip, str(root / 'paperwork')


# Compiling dominates on two cores (the steps take milliseconds): XLA:CPU is asked for less
# LLVM optimisation (the train step's compile: 35 s -> 22 s, measured side by side), which
# changes no result these tests look at.


def check_log(log, *, docs, tfds_dir, clip, workdir_classes):
  """The mesh, the three sources, the teacher and W's placement, as main.py logged them;
  returns the number of classes."""
  assert "Mesh {'data': 2, 'model': 4} over 8 devices" in log
  assert f'{docs}: {NUM_TYPES} classes, {3 * NUM_TYPES} images, 0 skipped' in log
  assert f'imagenet2012 in {tfds_dir}: {NUM_IMAGENET} images, {NUM_IMAGENET} classes' in log
  classes = workdir_classes['sources']
  assert [c['source'] for c in classes] == ['imagenet_per_image', 'folder', 'paperwork']
  assert [c['num_classes'] for c in classes][:2] == [NUM_IMAGENET, NUM_TYPES]
  num_classes = sum(c['num_classes'] for c in classes)
  assert f'Training on {num_classes} classes' in log
  # CLIP from the safetensors folder, at its own 32 px, projected to 16 features.
  assert f'Distillation: teacher clip:{clip}, 16 features at 32 px, float32' in log
  # PartialFC: W split by rows over 'model' into 4 blocks (each on 2 'data' replicas), 30% sampled.
  padded = -(-num_classes // 4) * 4
  m = re.search(r"PartialFC: W \[(\d+), 32\] held as (\d+) row blocks of (\d+) over 'model' "
                r'\((\d+) devices\); (\d+) of (\d+) rows of each block sampled per step', log)
  assert m, log[-5000:]
  rows, blocks, block_rows, devices, sampled, _ = map(int, m.groups())
  assert (rows, blocks, block_rows, devices) == (padded, 4, padded // 4, 8)
  assert sampled == int(np.ceil(0.3 * block_rows)) < block_rows
  return num_classes


def check_scalars(scalars, steps_logged, eval_steps):
  """Each source's share of every batch, moving finite losses, eval figures at `eval_steps`."""
  steps = lambda tag: sorted({s for s, _ in scalars[tag]})
  values = lambda tag: np.array([v for _, v in scalars[tag]])
  # Each source's share of the batches: the production weights 0.8 / 0.1 / 0.1.
  for source, weight in (('imagenet_per_image', 0.8), ('folder', 0.1), ('paperwork', 0.1)):
    share = values(f'train/share/{source}')
    assert set(steps_logged) <= set(steps(f'train/share/{source}'))
    assert np.all(np.abs(share - weight) <= 1 / 32), (source, share)  # exact quotas, +-1 example
  # The margin loss and the distillation loss are logged, finite, and move. A fall is not asked
  # for: in 8 steps at the production learning rate, with the global gradient norm (~800, the
  # ArcFace head's) clipped to 5, the KL moves by less than it differs from batch to batch
  # (measured 4.29, 4.36, 4.11, 4.20).
  for tag in ('train/loss', 'train/distill_kl', 'train/distill_cosine', 'train/distill_loss'):
    v = values(tag)
    assert set(steps_logged) <= set(steps(tag)) and np.all(np.isfinite(v)), (tag, v)
    assert np.ptp(v) > 0, (tag, v)
  assert set(eval_steps) <= set(steps('eval/synthetic_heldout/auroc')), sorted(scalars)
  assert np.all(np.isfinite(values('eval/synthetic_heldout/auroc')))


def check_config(saved):
  assert saved['model']['dtype'] == 'bfloat16' and saved['loss']['partial_fc']
  assert (saved['mesh']['data'], saved['mesh']['model']) == (2, 4)



def finished_steps(emulator, bucket):
  names = emulator.list_objects(bucket, 'run/checkpoints/')
  return sorted(int(m.group(1)) for n in names
                if (m := re.fullmatch(r'run/checkpoints/(\d+)/commit_success\.txt', n)))


# Measured on two cores: about 2.5 minutes with an empty compilation cache.
@pytest.mark.slow
def test_smoke_run_as_two_processes_on_gcs_killed_and_resumed(smoke_inputs, emulator):
  """The README's Cloud TPU command at toy size: `main.py --config=...:smoke --workdir=gs://...`
  started once per host (2 JAX processes x 4 CPU devices joined on localhost), documents and
  ImageNet read from the bucket, checkpoints, config and TensorBoard written to it; killed with
  SIGKILL after its first checkpoint (a preempted slice), started again: both processes resume
  from the bucket. Then a new document type is refused before training (LabelsChanged)."""
  from configs import arcface_clip  # pylint: disable=import-outside-toplevel
  from errors import LabelsChanged  # pylint: disable=import-outside-toplevel
  from tools.read_scalars import read_scalars  # pylint: disable=import-outside-toplevel
  import file_io  # pylint: disable=import-outside-toplevel
  import train  # pylint: disable=import-outside-toplevel
  local_docs, local_tfds, clip, paperwork = smoke_inputs
  bucket = 'smoke'
  emulator.create_bucket(bucket)
  for local, prefix in ((local_docs, 'docs'), (local_tfds, 'tfds')):
    for folder, _, files in os.walk(local):
      for name in files:
        path = os.path.join(folder, name)
        with open(path, 'rb') as f:
          emulator.upload(bucket, f'{prefix}/{os.path.relpath(path, local)}', f.read())
  docs, tfds_dir, workdir = (f'gs://{bucket}/{n}' for n in ('docs', 'tfds', 'run'))

  def start(steps):
    cmd = smoke_command(workdir, clip, docs, tfds_dir) + [
        f'--config.data.paperwork.cache_dir={paperwork}', f'--config.num_train_steps={steps}']
    port = free_port()
    return [subprocess.Popen(cmd, cwd=REPO, env=dict(
        os.environ, JAX_PLATFORMS='cpu', JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
        JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i),
        XLA_FLAGS=f'--xla_force_host_platform_device_count=4 {FAST_COMPILE}'),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]

  def finish(procs, kill_after_a_checkpoint=False):
    try:
      if kill_after_a_checkpoint:
        deadline = time.time() + 300
        while (time.time() < deadline and all(p.poll() is None for p in procs) and
               not finished_steps(emulator, bucket)):
          time.sleep(0.2)
        for p in procs:
          p.send_signal(signal.SIGKILL)
      logs = [p.communicate(timeout=400)[1] for p in procs]
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
    if not kill_after_a_checkpoint:
      for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-5000:]
    return logs

  first = finish(start(400), kill_after_a_checkpoint=True)
  saved = finished_steps(emulator, bucket)
  assert saved and saved[-1] < 400, first[0][-5000:]
  saved = saved[-1]
  logs = finish(start(saved + 4))
  classes = file_io.read_json(f'{workdir}/classes.json')
  for i, (log, resumed) in enumerate(zip(first, logs)):
    assert f'JAX process {i} / 2' in log and f'JAX process {i} / 2' in resumed
    check_log(log, docs=docs, tfds_dir=tfds_dir, clip=clip, workdir_classes=classes)
    assert f'Resumed from checkpoint at step {saved}' in resumed
  assert f'process 0 reads [0, {NUM_IMAGENET // 2})' in first[0]  # each host its share
  assert f'process 1 reads [{NUM_IMAGENET // 2}, {NUM_IMAGENET})' in first[1]
  # Steps 2 and 4 from the killed run, the last two logged and evaluated by the resumed one.
  check_scalars(read_scalars(workdir), [2, 4, saved + 2, saved + 4], [4, saved + 4])
  names = emulator.list_objects(bucket, 'run/')
  for step in (saved, saved + 4):
    assert f'run/checkpoints/{step}/commit_success.txt' in names, names
    assert f'run/checkpoints/{step}/default/manifest.ocdbt' in names, names
  assert 'run/config.json' in names
  assert any(n.startswith('run/events.out.tfevents.') for n in names), names
  assert not any('.tmp' in n for n in names), names  # the killed save's temps were cleaned
  check_config(file_io.read_json(f'{workdir}/config.json'))
  assert not os.path.exists(os.path.join(REPO, 'gs:'))  # nothing went to a local 'gs:' folder

  # A new type folder shifts no label here (it sorts last) but changes the head: refused before
  # training, in one line (in this process: 1 x 8 devices, the same mesh).
  emulator.upload(bucket, f'docs/type_{NUM_TYPES}/scan_0.png', open(
      os.path.join(local_docs, 'type_0', 'scan_0.png'), 'rb').read())
  c = arcface_clip.get_config('smoke')
  c.distill.teacher, c.data.folder.root = clip, docs
  c.data.imagenet_per_image.data_dir, c.data.paperwork.cache_dir = tfds_dir, paperwork
  c.num_train_steps = saved + 8
  with pytest.raises(LabelsChanged, match=rf'from the checkpoint at step {saved + 4} .*had '
                     rf"{NUM_TYPES} classes, now {NUM_TYPES + 1} \(added: \['type_{NUM_TYPES}'\]"):
    train.train_and_evaluate(c, workdir)
