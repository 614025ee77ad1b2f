"""Writes a grid PNG of training examples exactly as the trainer will see them.

  python -m input_pipeline.preview --config=configs/arcface_clip.py:demo --out=grid.png
  python -m input_pipeline.preview --config=configs/default.py \
      --config.data.sources="('folder',)" --config.data.folder.root=/data/docs --out=grid.png

Look before a long run: the augmentation strengths in c.data.augment are easiest to judge by eye.
Each tile is captioned with its label (the class id after mixing offsets).
"""
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np
from PIL import Image, ImageDraw

from input_pipeline import image_io
from input_pipeline import train_data

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'A configs/*.py file, optionally :arg.')
flags.DEFINE_string('out', 'grid.png', 'Where to write the grid PNG.')
flags.DEFINE_integer('rows', 6, 'Rows of the grid.')
flags.DEFINE_integer('cols', 8, 'Columns of the grid.')
flags.DEFINE_integer('step', 0, 'Training step whose batches are shown.')


def make_grid(images, labels, cols, caption=True):
  """uint8 [N, S, S, 3] -> one PIL image, `cols` tiles a row, label written on each tile."""
  n, s = images.shape[0], images.shape[1]
  rows = -(-n // cols)
  pad = 2
  grid = Image.new('RGB', (cols * (s + pad) + pad, rows * (s + pad) + pad), (40, 40, 40))
  draw = ImageDraw.Draw(grid)
  for i in range(n):
    x = pad + (i % cols) * (s + pad)
    y = pad + (i // cols) * (s + pad)
    grid.paste(Image.fromarray(images[i]), (x, y))
    if caption:
      text = str(int(labels[i]))
      draw.rectangle([x, y, x + 7 * len(text) + 3, y + 11], fill=(0, 0, 0))
      draw.text((x + 2, y), text, fill=(255, 255, 0))
  return grid


def write_preview(config, out, rows, cols, step=0):
  """Takes rows * cols training examples from `step` on and writes the grid to out (atomically)."""
  it, num_classes = train_data.create_train_iterator(config, start_step=step)
  images, labels = [], []
  while sum(len(x) for x in images) < rows * cols:
    batch = next(it)
    images.append(batch['image'])
    labels.append(batch['label'])
  images = np.concatenate(images)[:rows * cols]
  labels = np.concatenate(labels)[:rows * cols]
  grid = make_grid(images, labels, cols)
  tmp = f'{out}.tmp{os.getpid()}.png'
  grid.save(tmp)
  os.replace(tmp, out)
  return num_classes


def main(argv):
  del argv
  if FLAGS.config is None:
    sys.exit('usage: python -m input_pipeline.preview --config=configs/<file>.py[:arg] --out=grid.png')
  try:
    num_classes = write_preview(FLAGS.config, FLAGS.out, FLAGS.rows, FLAGS.cols, FLAGS.step)
  except image_io.DataError as e:
    sys.exit(f'Data error: {e}')
  print(f'wrote {FLAGS.out}: {FLAGS.rows}x{FLAGS.cols} training examples '
        f'({num_classes} classes in the mixed sources)')


if __name__ == '__main__':
  app.run(main)
