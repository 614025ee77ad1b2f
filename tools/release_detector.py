"""Writes the corner detector's release folder (inference/detector.py) from a training checkpoint.

  python tools/release_detector.py --workdir=workdirs/corners --out=released/corners-v3

The layout of the embedder's release (inference/released.py: model.json + float16
variables.msgpack). Checks that the stored detector finds the same corners as the checkpoint on
rendered held-out photos and refuses to write if the largest difference exceeds --max_diff (in
image fractions); prints one JSON line.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import numpy as np  # pylint: disable=g-import-not-at-top

from inference import detector as detector_lib  # pylint: disable=g-import-not-at-top
from inference import released  # pylint: disable=g-import-not-at-top
from inference.model import read_workdir_config  # pylint: disable=g-import-not-at-top
from input_pipeline import corner_data  # pylint: disable=g-import-not-at-top


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--step', type=int, default=None, help='default: the latest checkpoint')
  p.add_argument('--out', default=detector_lib.DEFAULT_DIR)
  p.add_argument('--info', default='{}', help='JSON merged into model.json info (figures, command)')
  p.add_argument('--max_diff', type=float, default=2e-3)
  args = p.parse_args(argv)
  source = detector_lib.load_workdir(args.workdir, args.step)
  config = read_workdir_config(args.workdir)
  config.corners.data.heldout_examples = 32
  photos = corner_data.heldout_set(config)['image']
  info = dict(json.loads(args.info), source=source.source, recipe=config.to_dict())
  stored = {}

  def measure(tmp):
    stored['model'] = detector_lib.load_release(tmp)
    return np.max(np.abs(stored['model'].detect_batch(photos)[0] - source.detect_batch(photos)[0]))

  diff, written = released.publish_checked(
      args.out, lambda tmp: released.save_release(tmp, source.model_config, source.variables,
                                                   source.image_size, info),
      measure, args.max_diff)
  if not written:
    sys.exit(f'float16 detector differs from the checkpoint by {diff:.2e} > {args.max_diff}')
  print(json.dumps({'out': args.out, 'source': source.source, 'max_corner_diff': diff,
                    'fingerprint': stored['model'].fingerprint}))


if __name__ == '__main__':
  main()
