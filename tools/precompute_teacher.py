r"""Runs the frozen teacher once over every un-augmented training image and stores the features.

    python tools/precompute_teacher.py --config=configs/arcface_clip.py:demo --out=/tmp/teacher.npz

With `config.distill.cache=<out>` the input pipeline then attaches batch['teacher_features'] by
image id instead of the teacher image, and the train step skips the teacher's forward (on a TPU
run the teacher would otherwise cost a CLIP forward per example per epoch).

Image ids: the synthetic source's clean images are its rendered templates, id = label *
NUM_VARIANTS + variant (input_pipeline/train_data.py uses the same ids). The other sources have
no image ids here: with them the teacher runs in the step on their clean views, and a cache is
refused at start (configs/validate.py). Written atomically as one .npz:
features [N, D] float16, teacher (name), image_size.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

import numpy as np  # pylint: disable=g-import-not-at-top

from configs.load import load_config  # pylint: disable=g-import-not-at-top
from errors import ConfigError  # pylint: disable=g-import-not-at-top


def synthetic_clean_images(config):
  """All clean synthetic images [T * V, S, S, 3] uint8 (S: template_size), in image-id order."""
  from input_pipeline import synthetic  # pylint: disable=import-outside-toplevel
  syn = config.data.synthetic
  images, _ = synthetic.render_templates(synthetic.train_templates(syn), syn.seed,
                                         syn.template_size)
  return images.reshape((-1,) + images.shape[2:])


def compute_features(teacher, images, size, batch_size=64):
  """Teacher features of uint8 images, resized (area filter, as the pipeline does) to `size`."""
  import jax  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from input_pipeline import augment  # pylint: disable=import-outside-toplevel
  from models import teacher as teacher_lib  # pylint: disable=import-outside-toplevel
  fn = jax.jit(lambda p, x: teacher_lib.teacher_features(teacher, p, x))
  out = []
  for i in range(0, len(images), batch_size):
    chunk = images[i:i + batch_size]
    x = np.stack([augment.resize_only(tf.constant(im), size).numpy() for im in chunk])
    n = len(x)
    if n < batch_size:  # one compiled shape
      x = np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:], x.dtype)])
    out.append(np.asarray(fn(teacher.params, x))[:n])
  return np.concatenate(out)


def write_cache(path, features, teacher_name, image_size):
  """Written atomically, to a local path or gs://... (file_io)."""
  import file_io  # pylint: disable=import-outside-toplevel
  file_io.write_with_atomic(path, lambda tmp: np.savez(
      tmp, features=features.astype(np.float16), teacher=np.asarray(teacher_name),
      image_size=np.asarray(image_size)))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--config', required=True, help='configs/x.py[:arg]')
  p.add_argument('--out', required=True, help='output .npz')
  p.add_argument('--batch_size', type=int, default=64)
  args = p.parse_args(argv)
  from models import teacher as teacher_lib  # pylint: disable=import-outside-toplevel
  try:
    config = load_config(args.config)
  except ConfigError as e:
    sys.exit(f'precompute_teacher: {e}')
  config.distill.cache = ''  # computing the cache, not reading it
  if tuple(config.data.sources) != ('synthetic',):
    sys.exit(f'precompute_teacher: only the synthetic source has un-augmented images to cache '
             f'(config.data.sources={tuple(config.data.sources)})')
  try:
    teacher = teacher_lib.load_teacher(config.distill)
  except (OSError, ValueError) as e:
    sys.exit(f'precompute_teacher: {e}')
  t0 = time.time()
  images = synthetic_clean_images(config)
  size = int(config.distill.get('image_size', 0) or teacher.image_size)
  feats = compute_features(teacher, images, size, args.batch_size)
  write_cache(args.out, feats, teacher.name, size)
  print(f'{args.out}: {feats.shape[0]} images x {feats.shape[1]} features from {teacher.name} '
        f'at {size} px in {time.time() - t0:.1f}s')


if __name__ == '__main__':
  main()
