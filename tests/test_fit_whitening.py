"""tools/fit_whitening.py: the grid_pca head whitens rendered captures; the release it writes."""
import os

import numpy as np
import pytest

from inference import released
from models.embedder import build_model
from tools import fit_whitening


def test_fit_whitens_the_captures_and_the_release_round_trips(tmp_path, capsys):
  config = fit_whitening.load_config('configs/release_grid.py:tiny')
  _, variables, _, info = fit_whitening.fit(config)
  images, labels = fit_whitening.rendered_captures(config)
  assert info['captures'] == len(images) == 30 and info['templates'] == 10
  # The head's outputs on the captures it was fitted on: centred, decorrelated, and scaled by
  # std_0 / (std_k + eps std_0), i.e. no direction more than 1/eps times the strongest one.
  z = np.asarray(build_model(config.model).apply(variables, images), np.float64)
  assert z.shape == (30, 16)
  std = z.std(axis=0)
  assert np.abs(z.mean(axis=0)).max() < 1e-3 * std.max()
  corr = np.corrcoef(z.T)
  assert np.abs(corr - np.eye(16)).max() < 1e-3
  assert std.max() / std.min() < 1.0 / config.whiten.eps

  # A random tiny backbone gives near-identical features: whitening amplifies float16 rounding,
  # so the default bound refuses to write (one line, nothing left behind)...
  out = str(tmp_path / 'rel')
  with pytest.raises(SystemExit, match='float16 storage changes embeddings'):
    fit_whitening.main(['--config', 'configs/release_grid.py:tiny', '--out', out])
  assert not os.path.exists(out) and not os.path.exists(out + '.new')
  # ...and a loose bound writes a release that loads as the model the CLI uses.
  fit_whitening.main(['--config', 'configs/release_grid.py:tiny', '--out', out,
                      '--max_diff', '10'])
  assert '"captures": 30' in capsys.readouterr().out
  model = released.load_release(out)
  e = model.embed(images[:4])
  assert e.shape == (4, 16) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)


def test_fit_refuses_other_heads_in_one_line(tmp_path):
  config = fit_whitening.load_config('configs/release_grid.py:tiny')
  config.model.head = 'ln_bn'
  with pytest.raises(fit_whitening.ConfigError, match='grid_pca head only'):
    fit_whitening.fit(config)
