"""`evaluate`: a labelled folder -> pair TPR@FPR, AUROC, top-1, open-set figures, ROC curve PNG.

Pair and top-1 figures are evaluation/verification.py's (one protocol for training-time eval and
this tool). Open-set: the labels are split into folds; for each fold, the other labels are
registered (their role=register images), the threshold is calibrated for the target false-accept
rate per unregistered capture on them (their queries against the other types' entries,
inference/calibration.py) and the fold's queries, whose labels the registry has never seen, are
classified: each one accepted is a false accept. Every label is held out exactly once; the
achieved rate comes with its Clopper-Pearson 95% interval and whether the target lies in it.
"""
import numpy as np
from PIL import Image, ImageDraw

from evaluation.verification import pair_metrics, pair_scores, top1_identification
from inference.calibration import calibrate_registry, rate_report
from inference.registry import Registry

EVAL_FPRS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def open_set_figures(embeddings, labels, is_register, model, target_fpr, folds=4, seed=0):
  labels = np.asarray(labels)
  is_register = np.asarray(is_register, bool)
  names = np.unique(labels)
  order = np.random.RandomState(seed).permutation(len(names))
  folds = max(2, min(folds, len(names)))
  counts = {'unknown_queries': 0, 'false_accepts': 0, 'known_queries': 0, 'known_correct': 0,
            'known_rejected': 0}
  thresholds = []
  for fold in range(folds):
    held = set(names[order[fold::folds]])
    is_held = np.array([l in held for l in labels])
    reg = Registry(model.fingerprint, model.embed_dim, model.preprocessing)
    for label in names:
      rows = np.flatnonzero((labels == label) & is_register & ~is_held)
      if len(rows):
        reg.add_embeddings(str(label), embeddings[rows], hashes=[f'row{r}' for r in rows])
    known_queries = np.flatnonzero(~is_register & ~is_held)
    calibrate_registry(reg, embeddings[known_queries], [str(l) for l in labels[known_queries]],
                       hashes=[f'row{r}' for r in known_queries], target_far=target_fpr)
    thresholds.append(reg.threshold)
    unknown_rows = np.flatnonzero(~is_register & is_held)
    if len(unknown_rows):
      answers = reg.classify_embeddings(embeddings[unknown_rows])
      counts['unknown_queries'] += len(unknown_rows)
      counts['false_accepts'] += sum(a['accepted'] for a in answers)
    if len(known_queries):
      answers = reg.classify_embeddings(embeddings[known_queries])
      counts['known_queries'] += len(known_queries)
      counts['known_correct'] += sum(a['label'] == l for a, l in zip(answers, labels[known_queries]))
      counts['known_rejected'] += sum(not a['accepted'] for a in answers)
  rate = rate_report(counts['false_accepts'], counts['unknown_queries'], target_fpr)
  return {
      'open_set_target_fpr': target_fpr, 'open_set_folds': folds,
      'unknown_false_accept_ci95': rate['rate_ci95'],
      'unknown_false_accept_target_in_ci95': rate['target_in_ci95'],
      'open_set_thresholds': [round(t, 5) for t in thresholds],
      'unknown_false_accept_rate': counts['false_accepts'] / max(1, counts['unknown_queries']),
      'known_correct_accept_rate': counts['known_correct'] / max(1, counts['known_queries']),
      'known_reject_rate': counts['known_rejected'] / max(1, counts['known_queries']),
      **{f'open_set_{k}': v for k, v in counts.items()},
  }


def evaluate_embeddings(embeddings, labels, is_register, model, target_fpr=1e-4, folds=4):
  out = pair_metrics(embeddings, labels, fprs=EVAL_FPRS)
  out['top1'] = top1_identification(embeddings, labels, is_register)
  out.update(open_set_figures(embeddings, labels, is_register, model, target_fpr, folds))
  return out


def roc_curve(embeddings, labels):
  """(fpr, tpr) arrays over every pair, one point per distinct score, highest score first."""
  scores, same = pair_scores(embeddings, labels)
  order = np.argsort(-scores, kind='stable')
  same = same[order]
  tpr = np.cumsum(same) / max(1, same.sum())
  fpr = np.cumsum(~same) / max(1, (~same).sum())
  return fpr, tpr


def draw_roc_png(curves, path, min_fpr=1e-5):
  """curves: {name: (fpr, tpr)}. Log-x ROC on a white canvas; Pillow only, written atomically."""
  from inference.atomic import write_with_atomic
  w, h, left, bottom, top, right = 640, 480, 60, 50, 20, 20
  img = Image.new('RGB', (w, h), 'white')
  d = ImageDraw.Draw(img)
  pw, ph = w - left - right, h - top - bottom
  lo = np.log10(min_fpr)

  def xy(f, t):
    x = left + (np.log10(np.clip(f, min_fpr, 1.0)) - lo) / -lo * pw
    return x, top + (1 - t) * ph

  d.rectangle([left, top, left + pw, top + ph], outline='black')
  for e in range(int(lo), 1):
    x, _ = xy(10.0 ** e, 0)
    d.line([x, top, x, top + ph], fill=(225, 225, 225))
    d.text((x - 12, top + ph + 5), f'1e{e}', fill='black')
  for t in np.linspace(0, 1, 6):
    _, y = xy(1, t)
    d.line([left, y, left + pw, y], fill=(225, 225, 225))
    d.text((left - 30, y - 6), f'{t:.1f}', fill='black')
  d.text((left + pw // 2 - 40, h - 20), 'FPR (log)', fill='black')
  d.text((5, 5), 'TPR', fill='black')
  colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
  for n, (name, (fpr, tpr)) in enumerate(curves.items()):
    pts = [xy(f, t) for f, t in zip(fpr, tpr)]
    if len(pts) > 4000:  # enough for 600 px; keeps the PNG quick to draw
      pts = [pts[i] for i in np.linspace(0, len(pts) - 1, 4000).astype(int)]
    colour = colours[n % len(colours)]
    d.line(pts, fill=colour, width=2)
    d.text((left + 10, top + 10 + 14 * n), name, fill=colour)
  write_with_atomic(path, lambda tmp: img.save(tmp, format='PNG'))
