"""Registry, sub-labels, calibration, search and bad input, on image folders the tests write.

The embedder here is a fixed random projection of the pixels (an EmbeddingModel like any other,
numpy only): it separates the test's types by construction, so these tests check the registry's
logic, not a model's quality. tests/test_inference_model.py runs the real flax model.
"""
import os

import numpy as np
import pytest
from PIL import Image

from inference.calibration import (calibrate_registry, clopper_pearson, predictive_bound,
                                   student_t_quantile)
from inference.embedding import EmbeddingModel
from inference.images import InputError, default_preprocessing, scan_registration_tree
from inference.registry import Registry, UNKNOWN
from inference.search import EntryIndex, top_k_matmul

SIZE = 16


def pixel_model(fingerprint='pix0', seed=0):
  proj = np.random.RandomState(seed).randn(SIZE * SIZE * 3, 24).astype(np.float32)

  def batch_fn(images):
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    e = (x - x.mean(axis=1, keepdims=True)) @ proj
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

  return EmbeddingModel(batch_fn=batch_fn, preprocessing=default_preprocessing(SIZE),
                        embed_dim=24, fingerprint=fingerprint, source='pixel projection')


def capture(doc_type, i, variant=0):
  """A capture of a 'document type': a random 4x4 colour layout, brightness and noise vary."""
  layout = np.random.RandomState(doc_type).randint(0, 256, (4, 4, 3)).astype(np.float32)
  if variant:  # a sub-label: the same type with a patch changed (e.g. a stamp / damage)
    layout[0, 0] = 255 - layout[0, 0]
  rng = np.random.RandomState(1000 * doc_type + 10 * variant + i)
  x = np.kron(layout, np.ones((4, 4, 1))) * rng.uniform(0.95, 1.05) + rng.normal(0, 3, (16, 16, 3))
  return np.clip(x, 0, 255).astype(np.uint8)


def write(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path)


@pytest.fixture()
def tree(tmp_path):
  root = tmp_path / 'register'
  for t in range(5):
    write(str(root / f'T{t}' / 'ref.png'), capture(t, 0))
  write(str(root / 'T0' / 'glare' / 'ref.png'), capture(0, 0, variant=1))
  return str(root)


def test_register_classify_subtypes_calibrate_unknown_roundtrip(tree, tmp_path):
  model = pixel_model()
  reg = Registry.for_model(model)
  for label, path in scan_registration_tree(tree):
    reg.add(label, [path])
  assert [e['label'] for e in reg.list()] == ['T0', 'T0/glare', 'T1', 'T2', 'T3', 'T4']
  # Add a type later: no retraining, just another registration.
  write(str(tmp_path / 'late' / 'a.png'), capture(5, 0))
  assert reg.add('T5', [str(tmp_path / 'late' / 'a.png')])['added'] == 1

  queries = np.stack([capture(t, 7) for t in range(6)] + [capture(0, 7, variant=1)])
  answers = reg.classify(queries, top_k=2)
  assert [a['label'] for a in answers] == ['T0', 'T1', 'T2', 'T3', 'T4', 'T5', 'T0/glare']
  assert answers[-1]['type'] == 'T0' and answers[-1]['sub_label'] == 'glare'
  assert len(answers[0]['top_k']) == 2 and answers[0]['top_k'][0]['score'] >= answers[0]['top_k'][1]['score']
  # Restricted to one type's sub-labels: a T3 capture can only answer T0 or T0/glare.
  restricted = reg.classify(queries[3:4], restrict_type='T0')[0]
  assert restricted['nearest'].split('/')[0] == 'T0'

  # Calibrate on a labelled set of registered and unregistered types (types 0..5 and 10..29).
  cal_types = list(range(6)) + list(range(10, 30))
  cal = np.stack([capture(t, 20 + i) for t in cal_types for i in range(3)])
  cal_labels = [f'T{t}' for t in cal_types for _ in range(3)]
  result = calibrate_registry(reg, model.embed(cal), cal_labels, target_far=0.05)
  # 60 captures of the 20 unregistered types + 18 of registered ones scored against the others.
  assert result['unknown_trials'] == 78 and result['false_accepts'] <= 3 and result['resolved']
  assert result['pair_impostor_pairs'] > 1000
  assert reg.threshold == result['threshold'] and reg.threshold_fpr == 0.05
  # An unregistered type (never seen in calibration either) is 'unknown'; known ones still pass.
  unknown = reg.classify(np.stack([capture(t, 50) for t in (40, 41, 42)]))
  assert all(a['label'] == UNKNOWN and not a['accepted'] for a in unknown), unknown
  known = reg.classify(queries)
  assert sum(a['accepted'] for a in known) >= 6

  path = str(tmp_path / 'reg.npz')
  reg.save(path)
  back = Registry.load(path, model)
  assert back.labels == reg.labels and back.threshold == reg.threshold
  assert back.calibration_check() is None  # entries unchanged since calibration
  np.testing.assert_array_equal(back.calibration_set[0], reg.calibration_set[0])
  np.testing.assert_array_equal(back.embeddings, reg.embeddings)
  assert [a['label'] for a in back.classify(queries)] == [a['label'] for a in known]

  # Remove a type: its sub-labels go with it.
  assert back.remove('T0') == 2 and 'T0/glare' not in back.labels


def test_duplicates_reported_and_other_model_refused(tree, tmp_path):
  model = pixel_model()
  reg = Registry.for_model(model)
  ref = os.path.join(tree, 'T1', 'ref.png')
  reg.add('T1', [ref])
  report = reg.add('t1', [ref])  # same image, label differing only by case
  assert report['similar_labels'] == ['T1']
  assert report['duplicate_images'][0]['other_label'] == 'T1'
  again = reg.add('T1', [ref])
  assert again['label_existed'] and again['skipped_duplicates'] == 1 and again['added'] == 0

  path = str(tmp_path / 'reg.npz')
  reg.save(path)
  before = open(path, 'rb').read()
  with pytest.raises(InputError, match='registry was built with model pix0'):
    Registry.load(path, pixel_model(fingerprint='other', seed=1))
  with pytest.raises(InputError, match='path separator'):
    reg.add('a\\b', [ref])
  with pytest.raises(InputError, match='control characters'):
    reg.add('bad\nname', [ref])
  bad = tmp_path / 'notimage.png'
  bad.write_text('hello')
  with pytest.raises(InputError, match='not a readable image'):
    reg.add('T2', [str(bad)])
  assert open(path, 'rb').read() == before  # failed operations never touch the file
  (tmp_path / 'garbage.npz').write_bytes(b'not a zip')
  with pytest.raises(InputError, match='not a registry file'):
    Registry.load(str(tmp_path / 'garbage.npz'))
  with pytest.raises(InputError, match='no images'):
    os.makedirs(tmp_path / 'empty')
    scan_registration_tree(str(tmp_path / 'empty'))


def test_search_backends_agree_with_brute_force():
  rng = np.random.RandomState(0)
  db = rng.randn(3000, 16).astype(np.float32)
  db /= np.linalg.norm(db, axis=1, keepdims=True)
  q = rng.randn(5, 16).astype(np.float32)
  want = np.argsort(-(q @ db.T), axis=1)[:, :7]
  s, i = top_k_matmul(q, db, 7, chunk=500)  # several chunks
  np.testing.assert_array_equal(i, want)
  mask = np.arange(3000) % 3 == 0
  _, im = EntryIndex(db, 'numpy').search(q, 4, mask)
  assert (im % 3 == 0).all()
  pytest.importorskip('faiss', reason='faiss-cpu is optional (requirements-dev.txt)')
  for backend in ('faiss', 'faiss_fp16'):
    fs, fi = EntryIndex(db, backend).search(q, 7)
    np.testing.assert_array_equal(fi, want)
    np.testing.assert_allclose(fs, s, atol=1e-5)  # fp16 candidates are re-scored exactly


def open_set_world(seed, n_types, per_type, dim=32, spread=0.75):
  """Embeddings with a known structure: each type a random unit direction, its captures that
  direction plus isotropic noise. Types never seen by calibration are new draws."""
  rng = np.random.RandomState(seed)
  centres = rng.randn(n_types, dim)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  x = np.repeat(centres, per_type, 0) + spread * rng.randn(n_types * per_type, dim) / np.sqrt(dim)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x.astype(np.float32), [f'{seed}-{t}' for t in range(n_types) for _ in range(per_type)]


def test_decision_calibration_hits_its_target_on_new_types_where_the_pair_threshold_does_not():
  """Known answer: calibrated for 5% per unregistered capture against a 60-entry registry, fresh
  captures of types neither registered nor calibrated on are accepted at a rate whose 95%
  interval holds 5%; the pair-FPR threshold for the same target accepts many times more."""
  reg = Registry('w', 32, default_preprocessing(SIZE))
  entries, entry_labels = open_set_world(1, 60, 1)
  for e, label in zip(entries, entry_labels):
    reg.add_embeddings(label, e[None])
  registered, registered_labels = open_set_world(1, 60, 4)  # same seed: the registered types
  others, other_labels = open_set_world(2, 200, 3)
  result = calibrate_registry(reg, np.concatenate([registered[60:], others]),
                              registered_labels[60:] + other_labels, target_far=0.05)
  assert result['resolved'] and result['unknown_trials'] == 180 + 600
  fresh, _ = open_set_world(3, 2000, 1)
  accepted = sum(a['accepted'] for a in reg.classify_embeddings(fresh))
  lo, hi = clopper_pearson(accepted, 2000)
  assert lo <= 0.05 <= hi, (accepted, lo, hi)
  at_pair = reg.classify_embeddings(fresh, threshold=result['pair_threshold'])
  assert sum(a['accepted'] for a in at_pair) > 3 * 0.05 * 2000
  # Registered types are still recognised at the decision threshold.
  assert result['known_correct_accept_rate'] > 0.5


def test_grown_registry_rechecks_its_rate_and_a_small_set_says_what_it_needs(tmp_path):
  reg = Registry('w', 32, default_preprocessing(SIZE))
  entries, labels = open_set_world(1, 20, 1)
  for e, label in zip(entries, labels):
    reg.add_embeddings(label, e[None])
  cal, cal_labels = open_set_world(2, 100, 2)
  small = calibrate_registry(reg, cal[:40], cal_labels[:40], target_far=1e-2)
  assert not small['resolved'] and small['needed_captures'] == 100 and small['false_accepts'] == 0
  result = calibrate_registry(reg, cal, cal_labels, target_far=0.05)
  path = str(tmp_path / 'r.npz')
  reg.save(path)
  grown = Registry.load(path)
  more, more_labels = open_set_world(4, 200, 1)  # ten times the entries: more chances to pass
  for e, label in zip(more, more_labels):
    grown.add_embeddings(label, e[None])
  check = grown.calibration_check()
  assert check['registry_entries'] == 220 and 'since calibration (20 -> 220 entries)' in check['message']
  assert check['achieved_rate'] > result['achieved_rate']
  again = calibrate_registry(grown, *grown.calibration_set[:2], target_far=0.05)
  assert again['threshold'] > result['threshold'] and grown.calibration_check() is None


@pytest.mark.parametrize('k,n', [(0, 50), (3, 200), (50, 50)])
def test_clopper_pearson_is_the_exact_binomial_interval(k, n):
  from scipy.stats import beta
  lo, hi = clopper_pearson(k, n)
  assert lo == pytest.approx(beta.ppf(0.025, k, n - k + 1) if k else 0.0, abs=1e-9)
  assert hi == pytest.approx(beta.ppf(0.975, k + 1, n - k) if k < n else 1.0, abs=1e-9)


def test_student_t_quantile_matches_the_tables():
  for p, dof, table in [(0.99, 4, 3.7469), (0.975, 1, 12.7062), (0.95, 30, 1.6973),
                        (0.995, 200, 2.6006), (0.999, 2, 22.3271)]:
    assert abs(student_t_quantile(p, dof) - table) < 1e-4, (p, dof)


def test_predictive_bound_holds_its_rate_for_new_types_from_a_handful_of_types():
  """Known answer: types whose captures are a normal type mean plus normal noise, 5 types seen
  (8 captures each) per world; a capture of a fresh type exceeds the bound fitted on the 5 at
  no more than the target rate over many worlds (a little less: the t quantile also widens the
  well-estimated within-type part), but not at a rate near zero. The highest score seen (what a
  quantile rule falls back to with so few captures) lets more through than the target."""
  rng = np.random.RandomState(0)
  target, worlds = 0.05, 3000
  over_bound = over_max = 0
  for _ in range(worlds):
    means = rng.normal(0.3, 0.1, 5)
    scores = (means[:, None] + rng.normal(0, 0.04, (5, 8))).ravel()
    types = np.repeat(np.arange(5), 8)
    fresh = rng.normal(0.3, 0.1) + rng.normal(0, 0.04)
    over_bound += fresh > predictive_bound(scores, types, target)
    over_max += fresh > scores.max()
  lo, hi = clopper_pearson(over_bound, worlds)
  assert lo <= target and hi > target / 2, (over_bound, lo, hi)
  assert clopper_pearson(over_max, worlds)[0] > target, over_max
  assert np.isnan(predictive_bound([0.1, 0.2], ['a', 'a'], target))  # one type: no bound


def test_turned_entries_meet_upside_down_captures_and_survive_save_load_remove(tmp_path):
  model = pixel_model()
  reg = Registry.for_model(model)
  reg.set_register_turns([180])
  for t in range(4):
    reg.add(f'T{t}', np.stack([capture(t, 0)]))
  assert reg.turns == [0, 180] * 4 and reg.sources[1] == ' (turned 180)'
  upside_down = np.stack([capture(t, 3)[::-1, ::-1] for t in range(4)])
  answers = reg.classify(upside_down)
  assert [(a['label'], a['turn']) for a in answers] == [(f'T{t}', 180) for t in range(4)]
  assert [a['turn'] for a in reg.classify(np.stack([capture(1, 3)]))] == [0]
  # Without turned entries the same captures are mostly misnamed (the pixel model is not
  # turn-invariant): the turned entries are what names them.
  plain = Registry.for_model(model)
  for t in range(4):
    plain.add(f'T{t}', np.stack([capture(t, 0)]))
  assert max(a['score'] for a in plain.classify(upside_down)) < min(
      a['score'] for a in answers)
  with pytest.raises(InputError, match=r'enters images at turns \[180\], not \[90, 270\]'):
    reg.set_register_turns([270, 90])
  with pytest.raises(InputError, match='each must be one of 90, 180, 270'):
    Registry.for_model(model).set_register_turns([45])

  path = str(tmp_path / 'r.npz')
  reg.save(path)
  back = Registry.load(path, model)
  assert back.turns == reg.turns and back.register_turns == [180]
  assert back.remove('T1') == 2 and back.turns == [0, 180] * 3
  assert [a['turn'] for a in back.classify(upside_down[[0, 2, 3]])] == [180] * 3
  # A registry written before turns existed loads with upright entries only; a broken list is
  # one line.
  meta = reg.metadata()
  meta.pop('turns'), meta.pop('register_turns')
  old = Registry._from_checked('old.npz', reg.embeddings, meta)
  assert old.turns == [0] * 8 and old.register_turns == []
  meta['turns'] = [0, 45] * 4
  with pytest.raises(InputError, match=r"old.npz: corrupt registry: 'turns' must be 8 of"):
    Registry._from_checked('old.npz', reg.embeddings, meta)
