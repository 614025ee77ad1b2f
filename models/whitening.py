"""PCA whitening, the 'grid_pca' head's Linear layer (models/heads.py; tools/fit_whitening.py)."""
import numpy as np

from errors import ConfigError


def fit_pca_whitening(x, dim, eps):
  """(kernel [D, dim], bias [dim], kept variance share): x @ kernel + bias whitens x.

  Centred on the mean; each kept direction scaled by std_0 / (its std + eps x std_0): whitened up
  to one global factor (the embedding is L2-normalised, so it changes nothing) that keeps the
  strongest direction about its length and the weights well inside float16 (the release); eps
  keeps the weakest kept directions (noise) from being blown up more than 1/eps times."""
  x = np.asarray(x, np.float64)
  if dim > min(x.shape):
    raise ConfigError(f'whitening to {dim} dimensions needs at least {dim} captures and '
                      f'features; have {x.shape[0]} captures of {x.shape[1]} features')
  mean = x.mean(axis=0)
  _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
  std = s / np.sqrt(len(x))
  kernel = vt[:dim].T * (std[0] / (std[:dim] + eps * std[0]))
  return kernel, -mean @ kernel, float(np.sum(s[:dim] ** 2) / np.sum(s ** 2))


def part_scales(pooled, sizes, weights):
  """Per-column scale: part p's columns x weights[p] / (its RMS norm over the captures), relative
  to the first part's (so with one part nothing changes)."""
  weights = tuple(weights) or (1.0,) * len(sizes)
  if len(weights) != len(sizes):
    raise ConfigError(f'config.whiten.part_weights={weights}: need one weight per part '
                      f'({len(sizes)}: the last map, then each of config.model.tap_blocks)')
  if sum(sizes) != pooled.shape[1]:
    raise ConfigError(f'pooled features have {pooled.shape[1]} columns, parts {sizes}')
  ends = np.cumsum(sizes)
  scale = np.empty(pooled.shape[1])
  for w, a, b in zip(weights, ends - sizes, ends):
    scale[a:b] = w / np.sqrt(np.mean(np.sum(np.square(pooled[:, a:b], dtype=np.float64), 1)))
  return scale / scale[0]
