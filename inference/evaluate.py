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
from inference.calibration import binomial_interval, calibrate_registry, rate_report
from inference.registry import Registry

EVAL_FPRS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _open_set_split(embeddings, labels, is_register, model, target_far, folds, seed, counts):
  """One assignment of the labels to folds; adds to `counts`, returns per-fold calibrations."""
  names = np.unique(labels)
  order = np.random.RandomState(seed).permutation(len(names))
  calibrations = []
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
                       hashes=[f'row{r}' for r in known_queries], target_far=target_far)
    calibrations.append(reg.calibration)
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
  return calibrations


def open_set_figures(embeddings, labels, is_register, model, target_fpr, folds=4, repeats=5):
  """Every label held out once per repeat (`folds` folds); `repeats` random fold assignments,
  pooled: one assignment alone swings with which similar-looking types land together (SROIE, 3
  folds: 0/404 to 32/404 accepted at a 1e-2 target over seeds). The pooled rate is compared with
  the range a threshold calibrated exactly would give: the 95% interval of Binomial(n, target)/n
  for n unknown queries per repeat."""
  labels = np.asarray(labels)
  is_register = np.asarray(is_register, bool)
  folds = max(2, min(folds, len(np.unique(labels))))
  counts = {'unknown_queries': 0, 'false_accepts': 0, 'known_queries': 0, 'known_correct': 0,
            'known_rejected': 0}
  calibrations, per_repeat = [], []
  for seed in range(repeats):
    before = (counts['false_accepts'], counts['unknown_queries'])
    calibrations += _open_set_split(embeddings, labels, is_register, model, target_fpr, folds,
                                    seed, counts)
    n = counts['unknown_queries'] - before[1]
    per_repeat.append(round((counts['false_accepts'] - before[0]) / max(1, n), 5))
  n_per_repeat = counts['unknown_queries'] // max(1, repeats)
  rate = counts['false_accepts'] / max(1, counts['unknown_queries'])
  lo, hi = binomial_interval(n_per_repeat, target_fpr)
  return {
      'open_set_target_fpr': target_fpr, 'open_set_folds': folds, 'open_set_repeats': repeats,
      'unknown_false_accept_rate': rate,
      'unknown_false_accept_rate_per_repeat': per_repeat,
      'unknown_false_accept_ci95': rate_report(counts['false_accepts'],
                                               counts['unknown_queries'], target_fpr)['rate_ci95'],
      'target_interval95': [lo, hi],
      'unknown_false_accept_within_target_interval': bool(lo <= rate <= hi),
      'open_set_thresholds': [round(c['threshold'], 5) for c in calibrations],
      'open_set_predicted_rates': [round(c['predicted_rate'], 5) for c in calibrations],
      'open_set_folds_resolved': f'{sum(c["resolved"] for c in calibrations)}/{len(calibrations)}',
      'known_correct_accept_rate': counts['known_correct'] / max(1, counts['known_queries']),
      'known_reject_rate': counts['known_rejected'] / max(1, counts['known_queries']),
      **{f'open_set_{k}': v for k, v in counts.items()},
  }


def evaluate_embeddings(embeddings, labels, is_register, model, target_fpr=1e-4, folds=4,
                        repeats=5):
  out = pair_metrics(embeddings, labels, fprs=EVAL_FPRS)
  out['top1'] = top1_identification(embeddings, labels, is_register)
  out.update(open_set_figures(embeddings, labels, is_register, model, target_fpr, folds, repeats))
  return out


def risk_coverage(correct, confidence):
  """Captures answered from the most to the least confident: (coverage, risk) after each one;
  risk = top-1 error among those answered."""
  order = np.argsort(-np.asarray(confidence, np.float64), kind='stable')
  wrong = ~np.asarray(correct, bool)[order]
  k = np.arange(1, len(wrong) + 1)
  return k / len(wrong), np.cumsum(wrong) / k


def error_at_coverage(correct, confidence, coverage):
  coverages, risks = risk_coverage(correct, confidence)
  return float(risks[max(0, int(np.ceil(coverage * len(risks))) - 1)])


def _ranks(x):
  return np.argsort(np.argsort(np.asarray(x, np.float64), kind='stable'), kind='stable')


def risk_coverage_figures(embeddings, labels, is_register, log_var, coverage=0.8):
  """Top-1 (nearest registered image) error when only the most confident `coverage` of the
  queries is answered, and the AURC, for four rankings: the cosine score; the uncertainty (low
  first); both (the mean of the two ranks); the mutual likelihood score of the query with its
  nearest registered image (losses/mls.py, both log-variances); and the best any ranking could
  do (`best_possible`: every wrong answer left out first)."""
  labels, is_register = np.asarray(labels), np.asarray(is_register, bool)
  e = np.asarray(embeddings, np.float32)
  log_var = np.asarray(log_var, np.float64)
  scores = e[~is_register] @ e[is_register].T
  nearest = np.argmax(scores, axis=1)
  correct = labels[is_register][nearest] == labels[~is_register]
  best = scores[np.arange(len(scores)), nearest]
  uncertainty = log_var[~is_register].mean(axis=1)
  lv_q, lv_e = log_var[~is_register], log_var[is_register][nearest]
  s = np.exp(lv_q) + np.exp(lv_e)
  diff = e[~is_register].astype(np.float64) - e[is_register][nearest]
  # losses/mls.mls in numpy: importing it would load JAX, and `evaluate` runs ONNX models without.
  mls = -0.5 * np.sum(diff ** 2 / s + np.log(s), axis=1)
  rankings = {'score': best, 'uncertainty': -uncertainty,
              'score_and_uncertainty': _ranks(best) + _ranks(-uncertainty), 'mls': mls}
  # The floor any ranking can reach: the wrong answers all left out first. Where it is close to
  # the score's figure, no uncertainty can lower the error by much at that coverage.
  answered = max(1, int(np.ceil(coverage * len(correct))))
  out = {'risk_coverage/queries': int(len(correct)),
         'risk_coverage/error_all': float(np.mean(~correct)),
         f'risk_coverage/error@{coverage:g}/best_possible': float(
             max(0, np.sum(~correct) - (len(correct) - answered)) / answered)}
  curves = {}
  for name, confidence in rankings.items():
    curves[name] = risk_coverage(correct, confidence)
    out[f'risk_coverage/error@{coverage:g}/by_{name}'] = error_at_coverage(correct, confidence,
                                                                           coverage)
    out[f'risk_coverage/aurc/by_{name}'] = float(np.mean(curves[name][1]))
  return out, curves


def degraded_copies(images, seed=0, strength=1.0):
  """Each image captured again by the training capture ops at `strength` (a phone photo or a
  scan of it: perspective, glare, blur, a thumb, a cut edge, ...), deterministic per index;
  never the unchanged 'clean' capture."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from input_pipeline import captures  # pylint: disable=import-outside-toplevel
  size = images.shape[1]
  box = tf.constant([0.0, 0.0, float(size), float(size)])
  out = np.empty_like(images)
  for i, image in enumerate(images):
    for attempt in range(16):  # a 'clean' capture (15%) gives the image back: draw again
      out[i] = captures.capture(tf.constant(image), box,
                                tf.constant([seed + 7919 * attempt, i], tf.int64), size,
                                strength)[0].numpy()
      if not np.array_equal(out[i], image):
        break
  return out


def draw_risk_coverage_png(curves, path, title=''):
  """curves: {name: (coverage, risk)}; Pillow only, written atomically."""
  from inference.atomic import write_with_atomic
  w, h, left, bottom, top, right = 640, 480, 60, 50, 30, 20
  img = Image.new('RGB', (w, h), 'white')
  d = ImageDraw.Draw(img)
  pw, ph = w - left - right, h - top - bottom
  ymax = max(0.05, max(float(r.max()) for _, r in curves.values()) * 1.1)
  xy = lambda c, r: (left + c * pw, top + (1 - r / ymax) * ph)
  d.rectangle([left, top, left + pw, top + ph], outline='black')
  for c in np.linspace(0, 1, 6):
    x, _ = xy(c, 0)
    d.line([x, top, x, top + ph], fill=(225, 225, 225))
    d.text((x - 10, top + ph + 5), f'{c:.1f}', fill='black')
  for r in np.linspace(0, ymax, 6):
    _, y = xy(0, r)
    d.line([left, y, left + pw, y], fill=(225, 225, 225))
    d.text((left - 40, y - 6), f'{r:.2f}', fill='black')
  d.text((left + pw // 2 - 60, h - 20), 'coverage (share answered)', fill='black')
  d.text((5, 5), 'top-1 error among answered' + (f'   {title}' if title else ''), fill='black')
  colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
  for n, (name, (cov, risk)) in enumerate(curves.items()):
    colour = colours[n % len(colours)]
    d.line([xy(c, r) for c, r in zip(cov, risk)], fill=colour, width=2)
    d.text((left + 10, top + 10 + 14 * n), f'ranked by {name}', fill=colour)
  write_with_atomic(path, lambda tmp: img.save(tmp, format='PNG'))


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
