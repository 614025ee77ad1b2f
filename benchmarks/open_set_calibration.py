"""How well each threshold rule meets its false-accept target on types it has never seen.

  python benchmarks/open_set_calibration.py --data ../shared/data/sroie_merchants \
      [--checkpoint released/docembed-v2] [--target 1e-2] [--folds 3,5] [--repeats 10]

The labels are split into folds (every label held out once per repeat, `repeats` random
assignments); the other labels are registered (their role=register image) and their queries
calibrate a threshold by each rule; the held-out labels' queries are classified and each one
accepted is a false accept. Rules (inference/calibration.py):
- pair: 1e-2 of different-type pairs above it (the pair FPR protocol; what `calibrate` did before
  issue 14);
- quantile: the plain quantile of each calibration capture's best score over the other types'
  entries;
- crossfit: the same scores, the share (or margin) cross-fitted over held-out types (`calibrate`).
Prints one JSON line per (rule, folds): the pooled rate, the per-repeat median and range, and
whether the pooled rate lies in the 95% interval of Binomial(n, target)/n.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import numpy as np  # pylint: disable=g-import-not-at-top

from inference import calibration  # pylint: disable=g-import-not-at-top
from inference import images as images_lib  # pylint: disable=g-import-not-at-top
from inference import released  # pylint: disable=g-import-not-at-top


def thresholds(e, labels, reg, target):
  """{rule: threshold} for one registry (rows `reg`) and its calibration captures (rest)."""
  ent, cal = np.flatnonzero(reg), np.flatnonzero(~reg)
  blank = [''] * len(e)
  best_other, _ = calibration.best_other_type_scores(
      e[cal], labels[cal], blank[:len(cal)], e[ent], labels[ent], blank[:len(ent)])
  rows = np.concatenate([cal, ent])
  pair = calibration.calibrate_threshold(e[rows], list(labels[rows]), None, target)
  crossfit = calibration.calibrate_decision(e[cal], list(labels[cal]), blank[:len(cal)], e[ent],
                                            list(labels[ent]), blank[:len(ent)], target)
  return {'pair': pair['threshold'],
          'quantile': calibration.decision_threshold(best_other, target)[0],
          'crossfit': crossfit['threshold']}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--data', required=True, help='folder with labels.csv (file,label,role)')
  p.add_argument('--checkpoint', default=released.DEFAULT_DIR)
  p.add_argument('--target', type=float, default=1e-2)
  p.add_argument('--folds', default='3,5')
  p.add_argument('--repeats', type=int, default=10)
  args = p.parse_args(argv)
  from inference.model import load_model  # pylint: disable=import-outside-toplevel
  model = load_model(args.checkpoint)
  rows = images_lib.read_labels_csv(args.data)
  loaded = images_lib.load_images([r[0] for r in rows], model.preprocessing, skip_unreadable=True)
  meta = {r[0]: r for r in rows}
  labels = np.array([meta[p][1] for p in loaded.paths], dtype=object)
  is_register = np.array([meta[p][2] == 'register' for p in loaded.paths])
  e = model.embed(loaded.images)
  names = np.unique(labels)
  for folds in [int(f) for f in args.folds.split(',')]:
    counts = {}
    for seed in range(args.repeats):
      order = np.random.RandomState(seed).permutation(len(names))
      per = {}
      for fold in range(folds):
        held = set(names[order[fold::folds]])
        is_held = np.array([l in held for l in labels])
        known = ~is_held
        t = thresholds(e[known], labels[known], is_register[known], args.target)
        unknown = np.flatnonzero(is_held & ~is_register)
        best = (e[unknown] @ e[is_register & known].T).max(axis=1)
        for rule, threshold in t.items():
          k, n = per.get(rule, (0, 0))
          per[rule] = (k + int((best > threshold).sum()), n + len(unknown))
      for rule, kn in per.items():
        counts.setdefault(rule, []).append(kn)
    for rule, kn in counts.items():
      k, n = np.array(kn).T
      rates = k / n
      lo, hi = calibration.binomial_interval(int(n[0]), args.target)
      pooled = float(k.sum() / n.sum())
      print(json.dumps({
          'data': os.path.basename(os.path.normpath(args.data)), 'model': model.fingerprint,
          'rule': rule, 'target': args.target, 'folds': folds, 'repeats': args.repeats,
          'unknown_queries_per_repeat': int(n[0]), 'pooled_rate': round(pooled, 5),
          'median_rate': round(float(np.median(rates)), 5),
          'min_rate': round(float(rates.min()), 5), 'max_rate': round(float(rates.max()), 5),
          'target_interval95': [round(lo, 5), round(hi, 5)],
          'pooled_within_target_interval': bool(lo <= pooled <= hi)}), flush=True)


if __name__ == '__main__':
  main()
