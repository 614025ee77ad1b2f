"""The registry's threshold, calibrated for the decision `classify` makes, and the pair figure.

The decision (issue 14): a capture of a type that is not registered is wrongly accepted when its
*best* score over all N registered entries passes the threshold. So the threshold is set on the
distribution of that best score, against a registry of the actual size: each labelled
calibration capture is scored against every entry of *other* types (as if its own type were not
registered; identical pixels never count). Captures of one type fall together (a merchant's 49
receipts all look like one other merchant's), so the plain quantile of those scores is biased: on
SROIE folds it let 2.3x the target through. The threshold is therefore cross-fitted over the
labels: over random splits of the calibration types (4/5 fit, 1/5 check), the share of captures
to let through on the fit types is chosen so that the check types' mean rate is at most `target`,
and that share is applied to all captures (accept = score strictly above). Where even the
highest score is too low for types never seen (a handful of types, or look-alike types: the
captures cannot resolve the target), the threshold is extrapolated: each type's captures are
taken as its mean plus noise and the type means as drawn from a normal, so a new type's capture
is predicted by the Student-t prediction bound over the k type means (k - 1 degrees of freedom,
`predictive_bound`). With few types that bound is far out, as it should be: on us_forms (7 types,
5 registered per fold) the margin search it replaces let 4.5% through at a 1% target with
docembed-v3 and 24% with v1. Reported: the rate on
the calibration captures with its Clopper-Pearson 95% interval (as if captures were independent)
and the predicted rate on new types with its 95% range over the splits, which is what the
clustering allows. With too few captures or types the target cannot be resolved and the result
says so, with what is needed. The calibration captures' embeddings are kept with
the registry, so when the registry grows the rate at the stored threshold is re-checked
(`recheck`) and can be re-calibrated without the images.

The pair figure (kept as a reported number, `pair_*`): the threshold that lets `target` of the
different-type *pairs* through (the evaluation README's protocol). It is not what classify needs:
an unknown capture meets N entries, so it is accepted about N times more often.
numpy only.
"""
import functools
import math

import numpy as np

DEFAULT_TARGET_FPR = 1e-4


def top_impostor_scores(embeddings, types, hashes, keep, block=1024):
  """The `keep` highest scores over pairs i<j with different types and different pixels.

  Returns (scores sorted descending, number of impostor pairs, number of genuine pairs, genuine
  scores). Memory stays O(block x N).
  """
  emb = np.asarray(embeddings, np.float32)
  types = np.asarray(types, dtype=object)
  _, type_ids = np.unique(types, return_inverse=True)
  _, hash_ids = np.unique(np.asarray(hashes, dtype=object), return_inverse=True)
  blank = np.asarray([not h for h in hashes])
  n = len(emb)
  top = np.zeros((0,), np.float32)
  n_impostor = 0
  genuine = []
  for start in range(0, n, block):
    rows = slice(start, min(n, start + block))
    s = emb[rows] @ emb.T
    i = np.arange(rows.start, rows.stop)[:, None]
    j = np.arange(n)[None, :]
    upper = j > i
    same_pixels = (hash_ids[rows][:, None] == hash_ids[None, :]) & ~blank[rows][:, None]
    same_type = type_ids[rows][:, None] == type_ids[None, :]
    impostor = upper & ~same_type & ~same_pixels
    n_impostor += int(impostor.sum())
    genuine.append(s[upper & same_type & ~same_pixels])
    cand = s[impostor]
    if keep > 0 and len(cand):
      cand = np.concatenate([top, cand])
      if len(cand) > keep:
        cand = cand[np.argpartition(-cand, keep - 1)[:keep]]
      top = cand
  genuine = np.concatenate(genuine) if genuine else np.zeros((0,), np.float32)
  return np.sort(top)[::-1], n_impostor, genuine


def calibrate_threshold(embeddings, types, hashes=None, target_fpr=DEFAULT_TARGET_FPR):
  """-> dict(threshold, target_fpr, impostor_pairs, accepted_impostors, achieved_fpr,
  genuine_pairs, genuine_accept_rate, resolution_limited)."""
  if not 0 < target_fpr < 1:
    raise ValueError(f'target FPR must be in (0, 1), got {target_fpr}')
  hashes = list(hashes) if hashes is not None else [''] * len(types)
  if len(set(types)) < 2:
    raise ValueError('calibration needs images of at least two types (no impostor pairs)')
  # Count first (cheap upper bound), then keep only as many top scores as can pass + 1.
  n_pairs_bound = len(types) * (len(types) - 1) // 2
  keep = int(np.floor(target_fpr * n_pairs_bound)) + 1
  top, n_impostor, genuine = top_impostor_scores(embeddings, types, hashes, keep)
  if n_impostor == 0:
    raise ValueError('calibration found no impostor pairs (all images identical?)')
  allowed = int(np.floor(target_fpr * n_impostor))  # impostor pairs that may pass
  # Accept score > threshold (strictly), the rule of evaluation/verification.threshold_at_fpr:
  # the threshold is the (allowed+1)-th highest impostor score.
  threshold = float(top[allowed])
  accepted = int((top > threshold).sum())
  return {
      'threshold': threshold, 'target_fpr': float(target_fpr),
      'impostor_pairs': n_impostor, 'accepted_impostors': accepted,
      'achieved_fpr': accepted / n_impostor,
      'genuine_pairs': int(len(genuine)),
      'genuine_accept_rate': float((genuine > threshold).mean()) if len(genuine) else None,
      'resolution_limited': bool(target_fpr * n_impostor < 1),
  }


def _binom_cdf(k, n, p):
  """P(X <= k) for X ~ Binomial(n, p), summed in log space (n up to millions is fine)."""
  if k < 0:
    return 0.0
  if k >= n or p <= 0:
    return 1.0
  if p >= 1:
    return 0.0
  i = np.arange(k + 1, dtype=np.float64)
  log_terms = (math.lgamma(n + 1) - np.array([math.lgamma(x + 1) for x in i])
               - np.array([math.lgamma(n - x + 1) for x in i])
               + i * math.log(p) + (n - i) * math.log1p(-p))
  top = log_terms.max()
  return float(min(1.0, math.exp(top) * np.exp(log_terms - top).sum()))


def clopper_pearson(k, n, confidence=0.95):
  """Exact two-sided binomial interval (lo, hi) for k successes in n trials (by bisection)."""
  if n <= 0:
    return 0.0, 1.0
  a = (1 - confidence) / 2

  def solve(f, level):  # f decreasing in p: the p where f(p) == level
    lo, hi = 0.0, 1.0
    for _ in range(60):
      mid = (lo + hi) / 2
      if f(mid) > level:
        lo = mid
      else:
        hi = mid
    return (lo + hi) / 2
  # lower: P(X >= k | p) = a, i.e. cdf(k - 1) = 1 - a; upper: P(X <= k | p) = a.
  lower = 0.0 if k == 0 else solve(lambda p: _binom_cdf(k - 1, n, p), 1 - a)
  upper = 1.0 if k >= n else solve(lambda p: _binom_cdf(k, n, p), a)
  return lower, upper


def binomial_interval(n, p, confidence=0.95):
  """(lo, hi) rates: the central `confidence` range of Binomial(n, p) / n, where a threshold
  calibrated exactly for rate p puts the false-accept rate of n unknown captures."""
  if n <= 0:
    return 0.0, 1.0
  a = (1 - confidence) / 2
  lo = next(k for k in range(n + 1) if _binom_cdf(k, n, p) >= a)
  hi = next(k for k in range(lo, n + 1) if _binom_cdf(k, n, p) >= 1 - a)
  return lo / n, hi / n


def best_other_type_scores(queries, query_types, query_hashes, entries, entry_types,
                           entry_hashes, block=1024):
  """Each query's best score over the entries whose type differs from its own (identical
  pixels excluded): the score it would meet if its type were not registered. -inf where no
  entry qualifies. Also returns each query's best entry index over *all* entries (-1: none)."""
  q = np.asarray(queries, np.float32)
  e = np.asarray(entries, np.float32)
  types = np.asarray(list(query_types) + list(entry_types), dtype=object)
  _, tid = np.unique(types, return_inverse=True)
  q_tid, e_tid = tid[:len(q)], tid[len(q):]
  best_other = np.full(len(q), -np.inf, np.float32)
  best_any = np.full(len(q), -1, np.int64)
  for start in range(0, len(q), block):
    rows = slice(start, min(len(q), start + block))
    s = q[rows] @ e.T
    same_pixels = np.array([[bool(h) and h == g for g in entry_hashes]
                            for h in query_hashes[rows]], bool).reshape(s.shape)
    s = np.where(same_pixels, -np.inf, s)
    if e.shape[0]:
      best_any[rows] = np.argmax(s, axis=1)
      other = np.where(q_tid[rows][:, None] != e_tid[None, :], s, -np.inf)
      best_other[rows] = other.max(axis=1)
  return best_other, best_any


def decision_threshold(unknown_best, target):
  """(threshold, accepted): the lowest threshold that at most floor(target * n) of the scores
  exceed (strictly). With target * n < 1 it is the highest score (nothing passes)."""
  s = np.sort(np.asarray(unknown_best, np.float64))[::-1]
  allowed = int(np.floor(target * len(s)))
  threshold = float(s[min(allowed, len(s) - 1)])
  return threshold, int((s > threshold).sum())


def rate_report(accepted, trials, target):
  lo, hi = clopper_pearson(accepted, trials)
  return {'false_accepts': int(accepted), 'unknown_trials': int(trials),
          'achieved_rate': accepted / trials if trials else None,
          'rate_ci95': [lo, hi], 'target_in_ci95': bool(lo <= target <= hi),
          'resolved': bool(target * trials >= 1)}


def _betacf(a, b, x):
  """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
  tiny = 1e-300
  c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
  d = 1.0 / (d if abs(d) > tiny else tiny)
  h = d
  for m in range(1, 300):
    for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
      d = 1.0 + num * d
      d = 1.0 / (d if abs(d) > tiny else tiny)
      c = 1.0 + num / c
      c = c if abs(c) > tiny else tiny
      h *= d * c
    if abs(d * c - 1.0) < 1e-15:
      break
  return h


def _betainc(a, b, x):
  if x <= 0 or x >= 1:
    return float(x >= 1)
  front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                   + a * math.log(x) + b * math.log1p(-x))
  if x < (a + 1) / (a + b + 2):
    return front * _betacf(a, b, x) / a
  return 1.0 - front * _betacf(b, a, 1 - x) / b


@functools.lru_cache(maxsize=256)  # the splits of one calibration ask for a few (p, dof) only
def student_t_quantile(p, dof):
  """The p-quantile (p > 0.5) of Student's t with `dof` degrees of freedom, by bisection on
  its CDF (numpy only: the registry tools run without scipy)."""
  upper_tail = lambda t: 0.5 * _betainc(dof / 2, 0.5, dof / (dof + t * t))
  lo, hi = 0.0, 1.0
  while upper_tail(hi) > 1 - p:
    hi *= 2
  for _ in range(100):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if upper_tail(mid) > 1 - p else (lo, mid)
  return (lo + hi) / 2


def predictive_bound(scores, types, target):
  """The score a capture of a *new* type exceeds with probability `target`, predicted from the
  types seen: capture = type mean + noise, type means ~ Normal. The Student-t prediction bound
  over the k type means: mean + t(1 - target; k - 1) * sqrt(var_means * (1 + 1/k) + var_within),
  var_means the sample variance of the type means, var_within the pooled within-type variance.
  NaN with fewer than two types."""
  scores = np.asarray(scores, np.float64)
  _, tid = np.unique(np.asarray(types, dtype=object), return_inverse=True)
  k = int(tid.max()) + 1 if len(tid) else 0
  if k < 2:
    return float('nan')
  counts = np.bincount(tid, minlength=k)
  means = np.bincount(tid, weights=scores, minlength=k) / counts
  within = float(((scores - means[tid]) ** 2).sum() / max(1, len(scores) - k))
  spread = math.sqrt(means.var(ddof=1) * (1 + 1 / k) + within)
  return float(means.mean() + student_t_quantile(1 - target, k - 1) * spread)


CROSSFIT_SPLITS, CROSSFIT_CHECK_SHARE = 200, 0.2


def crossfit_share(scores, types, target, splits=CROSSFIT_SPLITS, seed=0):
  """Leave-labels-out choice of the threshold rule: over random splits of the types into 'fit'
  (4/5) and 'check' (1/5), the largest share of fit captures let through whose threshold keeps
  the check types' mean rate at most `target`. When even the highest fit score lets more through
  (types never seen score above every type seen: few types, or look-alike types), the threshold
  is extrapolated by `predictive_bound` (`margin`: how far above the highest score it lies), and
  its predicted rate is that of the same bound fitted on each split's fit types.
  -> dict(share, margin, predicted, predicted_range95, splits)."""
  scores = np.asarray(scores, np.float64)
  types = np.asarray(types, dtype=object)
  names, tid = np.unique(types, return_inverse=True)
  shares = np.concatenate([[0.0], target * np.logspace(-2, 1, 61)])
  none = {'share': 0.0, 'margin': 0.0, 'predicted': float('nan'),
          'predicted_range95': [float('nan')] * 2, 'splits': 0}
  if len(names) < 2:
    return none
  rng = np.random.RandomState(seed)
  checks, by_share = [], []
  for _ in range(splits):
    check = rng.rand(len(names)) < CROSSFIT_CHECK_SHARE
    if check.all() or not check.any():
      continue
    checks.append(check)
    fit_scores = np.sort(scores[~check[tid]])[::-1]
    check_scores = scores[check[tid]]
    idx = np.minimum(np.floor(shares * len(fit_scores)).astype(int), len(fit_scores) - 1)
    by_share.append((check_scores[None, :] > fit_scores[idx][:, None]).mean(axis=1))
  if not by_share:
    return none
  by_share = np.array(by_share)
  ok = np.flatnonzero(by_share.mean(axis=0) <= target)
  if len(ok):
    rates, share, margin = by_share[:, ok[-1]], float(shares[ok[-1]]), 0.0
  else:
    # Only now the bound, fitted on each split's fit types (on integer type ids) and on all.
    rates = []
    for check in checks:
      fit = ~check[tid]
      bound = predictive_bound(scores[fit], tid[fit], target)
      top = scores[fit].max()
      rates.append(float((scores[check[tid]] > (max(top, bound) if np.isfinite(bound)
                                                 else top)).mean()))
    rates = np.array(rates)
    # At least a hair above the highest score: the share-0 rule above already failed.
    bound = predictive_bound(scores, tid, target)
    share, margin = 0.0, max(1e-6, bound - float(scores.max()))
  return {'share': share, 'margin': margin, 'predicted': float(rates.mean()),
          'predicted_range95': [float(v) for v in np.percentile(rates, [2.5, 97.5])],
          'splits': len(rates)}


def calibrate_decision(queries, query_types, query_hashes, entries, entry_types, entry_hashes,
                       target):
  """Threshold for a false-accept rate of `target` per unregistered capture against these
  entries. -> dict (threshold, target_far, rate figures, genuine accept figures)."""
  if not 0 < target < 1:
    raise ValueError(f'target false-accept rate must be in (0, 1), got {target}')
  if len(set(entry_types)) < 1 or not len(entries):
    raise ValueError('calibration needs a registry with entries (register some types first)')
  best_other, best_any = best_other_type_scores(
      queries, query_types, query_hashes, entries, entry_types, entry_hashes)
  valid = np.isfinite(best_other)
  if not valid.any():
    raise ValueError('calibration needs captures of at least one type besides a registered one '
                     '(every capture met only its own type\'s entries)')
  trials = int(valid.sum())
  valid_types = np.asarray(query_types, dtype=object)[valid]
  fit = crossfit_share(best_other[valid], valid_types, target)
  threshold, accepted = decision_threshold(best_other[valid], fit['share'])
  if fit['margin']:
    threshold = float(best_other[valid].max() + fit['margin'])
    accepted = 0
  predicted, splits = fit['predicted'], fit['splits']
  n_types = len(set(valid_types))
  out = {'threshold': threshold, 'target_far': float(target), 'registry_entries': len(entries),
         'calibration_images': len(queries), 'calibration_types': n_types,
         'crossfit_share': fit['share'], 'crossfit_margin': fit['margin'],
         'predicted_rate': predicted, 'predicted_rate_range95': fit['predicted_range95'],
         'crossfit_splits': splits, **rate_report(accepted, trials, target)}
  # Resolved: enough captures for the rate to be a count, and the held-out types' rate at the
  # chosen threshold at most the target (not merely the highest score seen).
  out['resolved'] = bool(target * trials >= 1 and splits and predicted <= target
                         and not fit['margin'])
  if not out['resolved']:
    out['needed_captures'] = int(math.ceil(1 / target))
    out['unresolved_reason'] = (
        f'{trials} captures (need {out["needed_captures"]})' if target * trials < 1 else
        f'captures of {n_types} types: types left out of the fit score above every type '
        f'seen (the threshold is extrapolated {fit["margin"]:.2f} above the highest score by '
        f'a prediction bound over the types; predicted rate {predicted:.3g}; captures of '
        f'more types give a lower threshold)' if splits else
        f'captures of only {n_types} type(s): label captures of more types')
  # Captures of registered types: accepted and named correctly at this threshold.
  e_types = np.asarray(entry_types, dtype=object)
  registered = np.array([t in set(entry_types) for t in query_types])
  if registered.any():
    q = np.asarray(queries, np.float32)[registered]
    idx = best_any[registered]
    score = np.einsum('ij,ij->i', q, np.asarray(entries, np.float32)[idx])
    right = e_types[idx] == np.asarray(query_types, dtype=object)[registered]
    out['known_captures'] = int(registered.sum())
    out['known_correct_accept_rate'] = float(np.mean(right & (score > threshold)))
  return out


def recheck(calibration_set, entries, entry_types, entry_hashes, threshold, target):
  """The false-accept rate at `threshold` of the stored calibration captures against the
  registry as it is now (it may have grown since calibration)."""
  emb, types, hashes = calibration_set
  best_other, _ = best_other_type_scores(emb, types, hashes, entries, entry_types, entry_hashes)
  valid = np.isfinite(best_other)
  return {'registry_entries': len(entries),
          **rate_report(int((best_other[valid] > threshold).sum()), int(valid.sum()), target)}


def calibrate_registry(registry, embeddings, labels, hashes=None, target_far=DEFAULT_TARGET_FPR):
  """Sets registry.threshold for a false-accept rate of `target_far` per unregistered capture
  (see module doc), keeps the calibration captures with it, and returns the calibration dict
  (the pair-FPR threshold for the same target under 'pair_*')."""
  emb = np.asarray(embeddings, np.float32).reshape(-1, registry.embed_dim)
  emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
  types = [label.split('/', 1)[0] for label in labels]
  hashes = list(hashes) if hashes is not None else [''] * len(types)
  entry_types = [label.split('/', 1)[0] for label in registry.labels]
  result = calibrate_decision(emb, types, hashes, registry.embeddings, entry_types,
                              registry.hashes, target_far)
  pooled = np.concatenate([emb, registry.embeddings])
  if len(set(types + entry_types)) >= 2:
    pair = calibrate_threshold(pooled, types + entry_types, hashes + registry.hashes, target_far)
    result.update({f'pair_{k}': v for k, v in pair.items()})
  registry.threshold = result['threshold']
  registry.calibration = result
  registry.calibration_set = (emb, types, hashes)
  registry.mark_calibrated()
  return result


def calibrate_unsure(registry, uncertainties, fingerprint, unsure_share):
  """The uncertainty above which classify answers 'unsure': the (1 - unsure_share) quantile of
  the calibration captures' uncertainties (the share of such captures a user accepts to be asked
  for a better photo), stored with the uncertainty head's fingerprint."""
  if not 0 < unsure_share < 1:
    raise ValueError(f'unsure share must be in (0, 1), got {unsure_share}')
  u = np.asarray(uncertainties, np.float64)
  threshold = float(np.quantile(u, 1 - unsure_share))
  registry.calibration.update(unsure_threshold=threshold, unsure_share=float(unsure_share),
                              uncertainty_fingerprint=fingerprint,
                              unsure_calibration_captures=int(len(u)))
  return threshold
