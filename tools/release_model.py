"""Writes a released-model folder (inference/released.py) from a training checkpoint.

  python tools/release_model.py --workdir=workdirs/release --out=released/docembed-v1 \
      --command="python main.py --config=configs/release.py --workdir=workdirs/release"

Stores the embedder's variables as float16 (a few MB) and checks that the stored model embeds
like the checkpoint: prints one JSON line with the largest embedding difference over rendered
pages (float16 rounding), and refuses to write if it exceeds --max_diff.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import numpy as np  # pylint: disable=g-import-not-at-top

from inference import model as model_lib  # pylint: disable=g-import-not-at-top
from inference import released  # pylint: disable=g-import-not-at-top
from input_pipeline import image_io  # pylint: disable=g-import-not-at-top
from input_pipeline import paperwork  # pylint: disable=g-import-not-at-top


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--step', type=int, default=None, help='default: the latest checkpoint')
  p.add_argument('--out', default=released.DEFAULT_DIR)
  p.add_argument('--command', default='', help='the training command, recorded in model.json')
  p.add_argument('--max_diff', type=float, default=2e-3)
  args = p.parse_args(argv)
  source = model_lib.load_checkpoint(args.workdir, args.step)
  config = model_lib.read_workdir_config(args.workdir)
  size = int(config.data.image_size)
  pages = np.stack([image_io.stretch_to_square(
      paperwork.render(10_000_000 + t, 1, 99, 2 * size)[0], size) for t in range(16)])
  info = dict(source=source.source, command=args.command, recipe=config.to_dict())
  diff, written = released.publish_checked(
      args.out, lambda tmp: released.save_release(tmp, source.model_config, source.variables,
                                                   size, info),
      lambda tmp: np.abs(released.load_release(tmp).embed(pages) - source.embed(pages)).max(),
      args.max_diff)
  print(json.dumps(dict(out=args.out, max_abs_embedding_diff=diff, source=source.source,
                        bytes=sum(os.path.getsize(os.path.join(args.out, f))
                                  for f in os.listdir(args.out)) if written else 0)))
  if not written:
    sys.exit(f'release_model: float16 storage changes embeddings by {diff:.2e} '
             f'(> --max_diff {args.max_diff}); nothing written to {args.out}')


if __name__ == '__main__':
  main()
