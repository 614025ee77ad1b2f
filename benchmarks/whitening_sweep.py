r"""The grid_pca head's choices, side by side on the real sets (issue 12; README "The released model").

  python benchmarks/whitening_sweep.py [--sizes 224,288] [--grids 1,2,3] [--dims 256,512]

For each input size: the frozen ImageNet MobileNetV2 (configs/release_grid.py's backbone) maps the
rendered paperwork captures tools/fit_whitening.py fits on (the same config), and every image of
us_forms and sroie_merchants; for each grid (1 = plain mean pooling) the region-pooled features
are scored raw (cosine) and PCA-whitened to each dimension (fitted on the rendered captures only), by the
evaluation protocol (TPR@1e-4 / AUROC / top-1). One JSON line per (size, grid, dim); dim 0 = raw.
The shared sets only score the choices: the release's choices were read off this table, so its
figures on these two sets are optimistic for unseen documents.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from configs.load import load_config  # pylint: disable=g-import-not-at-top
from evaluation import labelled_folder, verification  # pylint: disable=g-import-not-at-top
from input_pipeline import rendered  # pylint: disable=g-import-not-at-top
from models import pretrained  # pylint: disable=g-import-not-at-top
from models.embedder import build_model  # pylint: disable=g-import-not-at-top
from models.heads import region_pool  # pylint: disable=g-import-not-at-top
from models.whitening import fit_pca_whitening  # pylint: disable=g-import-not-at-top

SETS = ('us_forms', 'sroie_merchants')


def feature_maps(config, images, batch=32):
  model = build_model(config.model)
  variables = pretrained.init_embedder_variables(model, config.model, int(config.data.image_size))
  fn = jax.jit(lambda x: model.apply(variables, x, mutable=['intermediates'])[1][
      'intermediates']['backbone'][0])
  return np.concatenate([np.asarray(fn(images[i:i + batch])) for i in range(0, len(images), batch)])


def l2(x):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/release_grid.py')
  p.add_argument('--data', default=os.path.join(os.path.dirname(__file__), '..', '..', 'shared',
                                                 'data'))
  p.add_argument('--sizes', default='224,288')
  p.add_argument('--grids', default='1,2,3')
  p.add_argument('--dims', default='256,512')
  args = p.parse_args(argv)
  for size in map(int, args.sizes.split(',')):
    config = load_config(args.config)
    config.data.image_size = size
    fit_maps = feature_maps(config, rendered.training_captures(
        config.data.paperwork, size, int(config.whiten.captures_per_template))[0])
    sets = {}
    for name in SETS:
      images, labels, is_register, _ = labelled_folder.load_labelled_folder(
          os.path.join(args.data, name), size)
      sets[name] = (feature_maps(config, images), labels, is_register)
    for grid in map(int, args.grids.split(',')):
      fit_x = np.asarray(region_pool(fit_maps, grid))
      for dim in [0] + [int(d) for d in args.dims.split(',')]:
        row = dict(size=size, grid=grid, dim=dim or 'raw')
        if dim:
          kernel, bias, _ = fit_pca_whitening(fit_x, dim, config.whiten.eps)
        for name, (maps, labels, is_register) in sets.items():
          x = np.asarray(region_pool(maps, grid), np.float64)
          e = l2(x @ kernel + bias if dim else x)
          m = verification.pair_metrics(e, labels, fprs=(1e-4,))
          row[name] = [round(m['tpr@fpr=1e-04'], 3), round(m['auroc'], 3),
                       round(verification.top1_identification(e, labels, is_register), 3)]
        print(json.dumps(row), flush=True)


if __name__ == '__main__':
  main()
