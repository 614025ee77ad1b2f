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
