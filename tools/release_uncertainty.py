"""Adds a trained uncertainty head (issue 14, configs/uncertainty.py) to a released-model folder.

  python tools/release_uncertainty.py --workdir=workdirs/uncertainty --out=released/docembed-v1 \
      --command="python main.py --config=configs/uncertainty.py --workdir=workdirs/uncertainty"

The head must have been trained on that very release (same embedding fingerprint). Stored as
float16 beside the embedder (uncertainty.json + uncertainty.msgpack); prints one JSON line with
the largest log-variance difference over rendered pages against the workdir's head and refuses to
write if it exceeds --max_diff.
"""
import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import numpy as np  # pylint: disable=g-import-not-at-top

from inference import model as model_lib  # pylint: disable=g-import-not-at-top
from inference import released  # pylint: disable=g-import-not-at-top
from input_pipeline import image_io  # pylint: disable=g-import-not-at-top
from input_pipeline import paperwork  # pylint: disable=g-import-not-at-top


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True, help='a configs/uncertainty.py training workdir')
  p.add_argument('--out', default=released.DEFAULT_DIR, help='the release folder to add it to')
  p.add_argument('--command', default='', help='the training command, recorded')
  p.add_argument('--max_diff', type=float, default=0.05)
  args = p.parse_args(argv)
  source = model_lib.load_model(args.workdir)
  target = released.load_release(args.out)
  if not source.has_uncertainty or source.fingerprint != target.fingerprint:
    sys.exit(f'release_uncertainty: {args.workdir} is not an uncertainty head trained on '
             f'{args.out} (embedding fingerprint {source.fingerprint} vs {target.fingerprint})')
  size = source.preprocessing['image_size']
  pages = np.stack([image_io.stretch_to_square(
      paperwork.render(10_000_000 + t, 1, 99, 2 * size)[0], size) for t in range(16)])
  tmp_dir = args.out.rstrip('/') + '.new'
  shutil.copytree(args.out, tmp_dir, dirs_exist_ok=True)
  config = model_lib.read_workdir_config(args.workdir)
  released.save_uncertainty(tmp_dir, source.uncertainty_config, source.uncertainty_variables,
                            dict(source=source.source, command=args.command,
                                 recipe=config.to_dict()))
  stored = released.load_release(tmp_dir)
  diff = float(np.abs(stored.embed_with_uncertainty(pages)[1]
                      - source.embed_with_uncertainty(pages)[1]).max())
  print(json.dumps(dict(out=args.out, max_abs_log_variance_diff=diff, source=source.source)))
  if diff > args.max_diff:
    shutil.rmtree(tmp_dir)
    sys.exit(f'release_uncertainty: float16 storage changes log-variances by {diff:.2e} '
             f'(> --max_diff {args.max_diff}); nothing written to {args.out}')
  for name in (released.UNCERTAINTY_CONFIG, released.UNCERTAINTY_VARIABLES):
    os.replace(os.path.join(tmp_dir, name), os.path.join(args.out, name))
  shutil.rmtree(tmp_dir)


if __name__ == '__main__':
  main()
