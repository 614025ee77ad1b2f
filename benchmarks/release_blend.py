r"""docembed-v1 (CosFace-trained on rendered captures) and v2 (whitened frozen ImageNet regions)
blended, on clean and degraded real sets (issue 12; README "The released model").

  python benchmarks/release_blend.py [--sets us_forms,sroie_merchants,midv_photos] [--weights 0,0.3,0.5,0.7,1]
  python benchmarks/release_blend.py --other docembed-v3     # v1 with v3 instead of v2

Each image is embedded by both releases; the blend concatenates sqrt(w) * v1 and sqrt(1 - w) * v2,
so its cosine is w * cos_v1 + (1 - w) * cos_v2 (v2, or the release --other names). Degraded: the queries re-captured by the training
capture ops at full strength (inference/evaluate.degraded_copies, seed 0; `evaluate --degrade`),
registered images clean. One JSON line per (set, degraded, w): TPR@1e-4, AUROC, top-1.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import numpy as np  # pylint: disable=g-import-not-at-top

from evaluation import labelled_folder  # pylint: disable=g-import-not-at-top
from evaluation.verification import pair_metrics, top1_identification  # pylint: disable=g-import-not-at-top
from inference.evaluate import degraded_copies  # pylint: disable=g-import-not-at-top
from inference.released import load_release  # pylint: disable=g-import-not-at-top

RELEASED = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'released')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--data', default=os.path.join(os.path.dirname(__file__), '..', '..', 'shared',
                                                 'data'))
  p.add_argument('--sets', default='us_forms,sroie_merchants,midv_photos')
  p.add_argument('--weights', default='0,0.3,0.5,0.7,1')
  p.add_argument('--other', default='docembed-v2', help='the release blended with v1')
  args = p.parse_args(argv)
  v1 = load_release(os.path.join(RELEASED, 'docembed-v1'))
  v2 = load_release(os.path.join(RELEASED, args.other))
  for name in args.sets.split(','):
    images, labels, is_register, _ = labelled_folder.load_labelled_folder(
        os.path.join(args.data, name), 224)
    for degraded in (False, True):
      x = images.copy()
      if degraded:
        x[~is_register] = degraded_copies(x[~is_register], 0)
      e1, e2 = v1.embed(x), v2.embed(x)
      for w in map(float, args.weights.split(',')):
        e = np.concatenate([np.sqrt(w) * e1, np.sqrt(1 - w) * e2], axis=1)
        m = pair_metrics(e, labels, fprs=(1e-4,))
        print(json.dumps(dict(set=name, degraded=degraded, w_v1=w,
                              tpr_at_1e4=round(m['tpr@fpr=1e-04'], 3),
                              auroc=round(m['auroc'], 3),
                              top1=round(top1_identification(e, labels, is_register), 3))),
              flush=True)


if __name__ == '__main__':
  main()
