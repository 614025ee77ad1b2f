"""The released-model folder: round trip, damaged files, the CLI default, and its real-set bar."""
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from conftest import REPO
from errors import CorruptFileError
from inference import model as model_lib
from inference import released

SHARED = os.path.join(REPO, '..', 'shared', 'data')


def _tiny_model_config():
  from configs import default  # pylint: disable=import-outside-toplevel
  m = default.get_config().model
  m.width, m.squeeze_channels, m.embed_dim = 0.25, 8, 16
  return m


def test_release_round_trip_and_damage(tmp_path):
  cfg = _tiny_model_config()
  abstract = model_lib.abstract_variables(cfg, 32)
  model = model_lib.build_model(cfg)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.uint8), train=False)
  out = str(tmp_path / 'rel')
  stored = released.save_release(out, cfg.to_dict(), variables, 32, {'command': 'test'})
  assert released.is_release(out)
  loaded = released.load_release(out)
  direct = model_lib.from_variables(cfg, stored, 32)
  images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
  np.testing.assert_allclose(loaded.embed(images), direct.embed(images), atol=1e-6)
  assert jax.tree.structure(abstract) == jax.tree.structure(
      {k: loaded.variables[k] for k in abstract})
  # Truncated variables: one line naming the file.
  path = os.path.join(out, released.VARIABLES_FILE)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 3)
  with pytest.raises(CorruptFileError, match=released.VARIABLES_FILE):
    released.load_release(out)
  with open(os.path.join(out, released.CONFIG_FILE), 'w') as f:
    f.write('{"model": 3')
  with pytest.raises(CorruptFileError, match=released.CONFIG_FILE):
    released.load_release(out)


@pytest.mark.skipif(not released.is_release(released.DEFAULT_DIR), reason='no released model')
@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, 'us_forms')), reason='no shared data')
def test_released_model_is_the_cli_default_and_scores_what_the_readme_says(tmp_path):
  """`inference.cli evaluate` without --checkpoint scores the released model (docembed-v4); on
  us_forms it stays at what README "The released model" reports (TPR@1e-4 0.396, AUROC 0.966,
  top-1 1.0: issue 12's top-1 bar of 0.99 met), above the frozen ImageNet MobileNetV2 (0.179 /
  0.908 / 0.978) and docembed-v3 (0.325 / 0.972 / 1.0) on TPR@1e-4. The open-set rate at a
  threshold calibrated for 1e-2 on held-out form types lies in the target's 95% interval (2.70%;
  issue 14: with 7 types no fold resolves the target and the threshold is the prediction bound
  over the types). (Issue 12's bar, TPR@1e-4 >= 0.5, is not met yet.)"""
  out = tmp_path / 'us_forms.json'
  r = subprocess.run([sys.executable, '-m', 'inference.cli', 'evaluate', '--data',
                      os.path.join(SHARED, 'us_forms'), '--out', str(out), '--no-progress',
                      '--fpr', '1e-2', '--folds', '5', '--repeats', '10'],
                     cwd=REPO, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  figures = json.loads(out.read_text())
  assert 'docembed-v4' in figures['model_source']  # the default model was the released one
  assert figures['skipped'] == 0 and figures['images'] == 96
  assert figures['top1'] >= 0.99, figures
  assert figures['auroc'] > 0.96, figures
  assert figures['tpr@fpr=1e-04'] > 0.37, figures
  assert figures['unknown_false_accept_within_target_interval'], figures  # 0.0270
