"""Issue 14's uncertainty head (PFE): the MLS loss, the head trained on a frozen tiny embedder by
its own config, loaded from the workdir and from a release folder, 'unsure' answers, and the
risk-coverage figures."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from configs import uncertainty as uncertainty_config
from inference import cli
from inference import evaluate as evaluate_lib
from inference import released
from inference.model import load_model
from inference.registry import UNSURE, Registry
from losses import mls as mls_lib


def test_mls_loss_is_lowest_where_the_variances_explain_the_distance():
  """For one pair with equal variances s per dimension, -MLS is minimal at 2s = (mu_a - mu_b)^2."""
  mu = jnp.array([[0.6, 0.8, 0.0], [0.0, 0.8, 0.6]])
  labels = jnp.array([3, 3])
  d2 = float(jnp.sum(jnp.square(mu[0] - mu[1])))

  def loss(log_s):
    return mls_lib.mls_loss(mu, jnp.full((2, 3), log_s), labels)[0]
  best = float(jnp.log(d2 / 3 / 2))  # the same variance in every dimension
  assert abs(float(jax.grad(loss)(best))) < 1e-4
  assert loss(best) < loss(best - 1.0) and loss(best) < loss(best + 1.0)
  # No same-label pair: nothing to learn from.
  assert float(mls_lib.mls_loss(mu, jnp.zeros((2, 3)), jnp.array([1, 2]))[1]) == 0


def test_risk_coverage_known_answer():
  correct = np.array([True, True, False, True, False])
  confident = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
  coverage, risk = evaluate_lib.risk_coverage(correct, confident)
  np.testing.assert_allclose(coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
  np.testing.assert_allclose(risk, [0, 0, 1 / 3, 1 / 4, 2 / 5])
  assert evaluate_lib.error_at_coverage(correct, confident, 0.8) == 0.25
  # Ranking the two wrong ones last answers 60% with no error.
  assert evaluate_lib.error_at_coverage(correct, -np.array([0, 0, 9, 0, 9.0]), 0.6) == 0.0


def tiny_release(path):
  from configs import default
  from models.embedder import build_model
  c = default.get_config()
  c.model.backbone, c.model.width, c.model.embed_dim, c.model.squeeze_channels = 'lcnet', 0.25, 32, 8
  model = build_model(c.model)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.uint8))
  # Batch-norm statistics of random pixels, as training would leave them: at init (mean 0,
  # variance 1) the activations vanish (~1e-13) and every image would look alike to the head.
  images = np.random.RandomState(5).randint(0, 256, (16, 32, 32, 3)).astype(np.uint8)
  update = jax.jit(lambda v: model.apply(v, images, train=True, mutable=['batch_stats'])[1])
  for _ in range(60):
    variables = {'params': variables['params'], **update(variables)}
  released.save_release(path, c.model.to_dict(), variables, 32, {})
  return path


@pytest.fixture(scope='module')
def head_workdir(tmp_path_factory):
  import train_uncertainty
  base = tiny_release(str(tmp_path_factory.mktemp('base')))
  config = uncertainty_config.get_config('tiny')
  config.uncertainty.base = base
  config.data.paperwork.cache_dir = str(tmp_path_factory.mktemp('render_cache'))
  wd = str(tmp_path_factory.mktemp('uncertainty'))
  train_uncertainty.train_and_evaluate(config, wd)
  return base, wd


def test_head_loads_from_workdir_and_release_and_classify_says_unsure(head_workdir, tmp_path,
                                                                     capsys):
  base, wd = head_workdir
  model = load_model(wd)
  plain = load_model(base)
  assert model.has_uncertainty and not plain.has_uncertainty
  assert model.fingerprint == plain.fingerprint  # the embedder is untouched: registries stay valid
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (6, 32, 32, 3)).astype(np.uint8)
  emb, log_var = model.embed_with_uncertainty(images)
  np.testing.assert_allclose(emb, plain.embed(images), atol=1e-6)
  assert log_var.shape == (6, 32) and np.isfinite(log_var).all() and np.ptp(log_var.mean(1)) > 0

  # Into a release folder (float16): the same uncertainties, within float16 rounding.
  release = str(tmp_path / 'release')
  released.save_release(release, plain.model_config, plain.variables, 32, {})
  released.save_uncertainty(release, model.uncertainty_config, model.uncertainty_variables, {})
  again = released.load_release(release)
  np.testing.assert_allclose(again.embed_with_uncertainty(images)[1], log_var, atol=2e-2)

  # Register 3 types, calibrate with half of the calibration captures 'too uncertain'.
  root = tmp_path / 'data'
  rows = ['file,label,role']
  for t in range(6):
    for i in range(3):
      img = np.clip(rng.randint(0, 256, (1, 1, 3)) + rng.randint(-30, 30, (32, 32, 3)), 0, 255)
      os.makedirs(root, exist_ok=True)
      Image.fromarray(img.astype(np.uint8)).save(root / f'{t}_{i}.png')
      rows.append(f'{t}_{i}.png,T{t},{"register" if i == 0 else "query"}')
  (root / 'labels.csv').write_text('\n'.join(rows) + '\n')
  reg = str(tmp_path / 'reg.npz')
  for t in range(3):
    assert cli.main(['register', '--checkpoint', wd, '--registry', reg, '--label', f'T{t}',
                     str(root / f'{t}_0.png'), '--no-progress']) == 0
  capsys.readouterr()
  assert cli.main(['calibrate', '--checkpoint', wd, '--registry', reg, '--data', str(root),
                   '--far', '0.1', '--unsure-share', '0.5', '--json', '--no-progress']) == 0
  result = json.loads(capsys.readouterr().out)
  assert result['unsure_share'] == 0.5 and result['uncertainty_fingerprint']
  assert cli.main(['classify', '--checkpoint', wd, '--registry', reg, '--json', '--no-progress',
                   str(root)]) == 0
  answers = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  unsure = [a['uncertainty'] > result['unsure_threshold'] for a in answers]
  assert [a['label'] == UNSURE for a in answers] == unsure and 0 < sum(unsure) < len(answers)
  # The same registry used with the plain model: no uncertainty, never 'unsure'.
  answers = Registry.load(reg, plain).classify(np.stack([np.asarray(Image.open(
      root / f'{t}_1.png')) for t in range(6)]))
  assert all('uncertainty' not in a and a['label'] != UNSURE for a in answers)

  # evaluate: risk-coverage figures and the PNG, on degraded queries.
  out = str(tmp_path / 'rc.png')
  assert cli.main(['evaluate', '--checkpoint', wd, '--data', str(root), '--degrade', '--json',
                   '--risk-png', out, '--fpr', '0.1', '--folds', '2', '--no-progress']) == 0
  figures = json.loads(capsys.readouterr().out)
  assert figures['degraded_queries'] and figures['risk_coverage/queries'] == 12
  assert 0 <= figures['risk_coverage/error@0.8/by_uncertainty'] <= 1
  assert Image.open(out).size == (640, 480)


def test_risk_coverage_figures_on_a_known_answer():
  # Two registered types on the axes; 10 queries: 3 wrong (nearest the other type), of which the
  # lowest-scoring one is wrong. At 80% coverage 8 are answered: the score leaves out one wrong
  # and one right query (2/8 wrong), the best ranking leaves out two wrong ones (1/8).
  angles = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 1.0, 1.2])
  queries = np.stack([np.cos(angles), np.sin(angles)], 1)
  emb = np.concatenate([[[1.0, 0.0], [0.0, 1.0]], queries]).astype(np.float32)
  labels = np.array(['A', 'B'] + ['A'] * 7 + ['B', 'A', 'A'])
  is_register = np.arange(12) < 2
  log_var = np.zeros((12, 2))
  figures, _ = evaluate_lib.risk_coverage_figures(emb, labels, is_register, log_var, 0.8)
  assert figures['risk_coverage/error_all'] == 0.3
  assert figures['risk_coverage/error@0.8/best_possible'] == 1 / 8
  assert figures['risk_coverage/error@0.8/by_score'] == 2 / 8


def test_degraded_copies_are_deterministic_captures():
  rng = np.random.RandomState(1)
  images = rng.randint(0, 256, (2, 32, 32, 3)).astype(np.uint8)
  a, b = evaluate_lib.degraded_copies(images, 3), evaluate_lib.degraded_copies(images, 3)
  np.testing.assert_array_equal(a, b)
  assert a.shape == images.shape and a.dtype == np.uint8 and np.abs(a.astype(int) - images).mean() > 5


def test_export_carries_the_uncertainty_output(head_workdir, tmp_path):
  from inference.export import export_model
  _, wd = head_workdir
  model = load_model(wd)
  results = export_model(model, str(tmp_path / 'export'))
  images = np.random.RandomState(2).randint(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  want = model.embed_with_uncertainty(images)[1]
  for fmt in ('jax', 'onnx'):
    assert results[fmt]['log_variance_max_abs_diff'] < 1e-4, results
    exported = load_model(results[fmt]['path'])
    assert exported.has_uncertainty and exported.fingerprint == model.fingerprint
    assert exported.uncertainty_fingerprint == model.uncertainty_fingerprint
    np.testing.assert_allclose(exported.embed_with_uncertainty(images)[1], want, atol=1e-4)
