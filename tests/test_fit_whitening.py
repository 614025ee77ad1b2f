"""tools/fit_whitening.py: the grid_pca head whitens rendered captures; the release it writes."""
import os

import jax
import ml_collections
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


def test_side_taps_join_the_whitened_vector_at_the_configured_weights():
  # v3's layout at toy size: a random MobileNetV2 whose block-13 map is pooled beside the last map.
  config = fit_whitening.load_config('configs/release_grid.py:tiny_taps')
  model = build_model(config.model)
  _, variables, _, info = fit_whitening.fit(config)
  images, _ = fit_whitening.rendered_captures(config)
  _, inter = model.apply(variables, images, mutable=['intermediates'])
  pooled = np.asarray(inter['intermediates']['head']['squeezed'][0], np.float64)
  sizes = fit_whitening.part_sizes(config.model, variables, pooled.shape[1])
  # 64 px: 2x2 windows over the last map (1,280 channels: never narrowed below that) and 4x4
  # windows over block 13's 4x4 map (96 x 0.25 = 24 channels).
  assert sizes == [4 * 1280, 16 * 24] and info['feature_dim'] == sum(sizes)
  for weights in [(1.0, 1.0), (1.0, 0.5)]:
    scale = fit_whitening.part_scales(pooled, sizes, weights)
    rms = [np.sqrt(np.mean(np.sum((pooled * scale)[:, a:b] ** 2, 1)))
           for a, b in [(0, sizes[0]), (sizes[0], sum(sizes))]]
    assert rms[1] / rms[0] == pytest.approx(weights[1], rel=1e-6)
    assert np.all(scale[:sizes[0]] == 1.0)  # relative to the first part: one part changes nothing
  # v4's power normalisation: the whitening reads each pooled number as sign(x) sqrt(|x|), the
  # tap's (a linear bottleneck's output) negative ones included.
  assert config.model.power == 0.5
  plain = build_model(ml_collections.ConfigDict(dict(config.model.to_dict(), power=1.0)))
  _, inter = plain.apply(variables, images, mutable=['intermediates'])
  raw = np.asarray(inter['intermediates']['head']['squeezed'][0], np.float64)
  assert (raw[:, sizes[0]:] < 0).mean() > 0.1
  np.testing.assert_allclose(pooled, np.sign(raw) * np.sqrt(np.abs(raw)), rtol=1e-5, atol=1e-6)
  z = np.asarray(model.apply(variables, images), np.float64)
  corr = np.corrcoef(z.T)
  assert np.abs(corr - np.eye(z.shape[1])).max() < 1e-3  # still whitened, scale folded in
  with pytest.raises(fit_whitening.ConfigError, match='one weight per part'):
    fit_whitening.part_scales(pooled, sizes, (1.0,))
  # Side taps on a backbone without them: one line when the model is built, not a trace error.
  config.model.backbone = 'lcnet'
  with pytest.raises(fit_whitening.ConfigError, match='only the mobilenet_v2 backbone'):
    build_model(config.model).init(jax.random.PRNGKey(0), images[:1])
