r"""The grid_pca head's choices, side by side on the real sets (issue 12; README "The released model").

  python benchmarks/whitening_sweep.py [--sizes 224,288] [--grids 1,2,3] [--dims 256,512]
  python benchmarks/whitening_sweep.py --sizes 224 --grids 2 --dims 256,512,1024 --taps 13 --tap_grids 3,4
  python benchmarks/whitening_sweep.py --sizes 224 --grids 2 --dims 512 --taps 13 --powers 1,0.6,0.5,0.4,0.3
  python benchmarks/whitening_sweep.py --sizes 224 --grids 2 --dims 512,768 --taps 13 --powers 0.5 \
      --templates 1500 --eps 0.01,0.03,0.1

For each input size: the frozen ImageNet MobileNetV2 (configs/release_grid.py's backbone) maps the
rendered paperwork captures tools/fit_whitening.py fits on (the same config), and every image of
us_forms and sroie_merchants; for each grid (1 = plain mean pooling) the region-pooled features
are scored raw (cosine) and PCA-whitened to each dimension (fitted on the rendered captures only), by the
evaluation protocol (TPR@1e-4 / AUROC / top-1). One JSON line per (size, grid, dim); dim 0 = raw.
With --taps (v3): each grid's regions joined by those of MobileNetV2 block `--taps`'s map at each
--tap_grid, the two parts at equal RMS norm (as configs/release_grid.py's part_weights (1, 1)).
With --powers (v4: 0.5): each pooled number to sign(x) |x|^power first (models/heads.py).
--templates and --eps: the whitening fitted on more (or fewer) rendered templates (4 captures
each), with other regularisers (models/whitening.py).
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
from models.whitening import fit_pca_whitening, part_scales  # pylint: disable=g-import-not-at-top

SETS = ('us_forms', 'sroie_merchants')


def feature_maps(config, images, batch=32):
  """The last map, or (last map, tap map) when config.model.tap_blocks names a block."""
  model = build_model(config.model)
  variables = pretrained.init_embedder_variables(model, config.model, int(config.data.image_size))
  tapped = bool(config.model.get('tap_blocks', ()))

  def maps(x):
    inter = model.apply(variables, x, mutable=['intermediates'])[1]['intermediates']
    backbone = inter['backbone'][0]
    return (backbone, inter['backbone_taps'][0][0]) if tapped else backbone

  fn = jax.jit(maps)
  out = [jax.device_get(fn(images[i:i + batch])) for i in range(0, len(images), batch)]
  if tapped:
    return tuple(np.concatenate([o[k] for o in out]) for k in range(2))
  return np.concatenate(out)


def signed_power(x, power):
  """models/heads.py's power normalisation."""
  return x if power == 1 else np.sign(x) * np.abs(x) ** power


def joined(maps, grid, tap_grid, scale=None, power=1.0):
  """Region-pooled features (each to the signed `power`); with a tap map, its regions appended,
  the parts at equal RMS norm (models/whitening.part_scales with weights (1, 1), fitted on the
  first call: (features, scale))."""
  if not isinstance(maps, tuple):
    return signed_power(np.asarray(region_pool(maps, grid), np.float64), power), None
  last = signed_power(np.asarray(region_pool(maps[0], grid), np.float64), power)
  tap = signed_power(np.asarray(region_pool(maps[1], tap_grid), np.float64), power)
  x = np.concatenate([last, tap], 1)
  if scale is None:
    scale = part_scales(x, [last.shape[1], tap.shape[1]], (1.0, 1.0))
  return x * scale, scale


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
  p.add_argument('--taps', default='', help='a MobileNetV2 block whose map joins the regions')
  p.add_argument('--tap_grids', default='4')
  p.add_argument('--powers', default='1', help='signed powers of the pooled vector (v4: 0.5)')
  p.add_argument('--templates', type=int, default=0,
                 help='rendered templates the whitening is fitted on (default: the config\'s, 600)')
  p.add_argument('--eps', default='', help='whitening regularisers (default: the config\'s, 1e-2)')
  args = p.parse_args(argv)
  tap_grids = [int(g) for g in args.tap_grids.split(',')] if args.taps else [0]
  for size in map(int, args.sizes.split(',')):
    config = load_config(args.config)
    config.data.image_size = size
    config.model.tap_blocks = (int(args.taps),) if args.taps else ()
    if args.templates:
      config.data.paperwork.num_templates = args.templates
    fit_maps = feature_maps(config, rendered.training_captures(
        config.data.paperwork, size, int(config.whiten.captures_per_template))[0])
    sets = {}
    for name in SETS:
      images, labels, is_register, _ = labelled_folder.load_labelled_folder(
          os.path.join(args.data, name), size)
      sets[name] = (feature_maps(config, images), labels, is_register)
    for grid, tap_grid, power in [(g, t, w) for g in map(int, args.grids.split(','))
                                  for t in tap_grids for w in map(float, args.powers.split(','))]:
      fit_x, scale = joined(fit_maps, grid, tap_grid, power=power)
      epsilons = [float(e) for e in args.eps.split(',')] if args.eps else [config.whiten.eps]
      for dim, eps in [(0, None)] + [(int(d), e) for d in args.dims.split(',') for e in epsilons]:
        row = dict(size=size, grid=grid, dim=dim or 'raw', power=power)
        if args.taps:
          row.update(tap=int(args.taps), tap_grid=tap_grid)
        if args.templates or args.eps:
          row.update(templates=int(config.data.paperwork.num_templates), eps=eps)
        if dim:
          kernel, bias, _ = fit_pca_whitening(fit_x, dim, eps)
        for name, (maps, labels, is_register) in sets.items():
          x = joined(maps, grid, tap_grid, scale, power)[0]
          e = l2(x @ kernel + bias if dim else x)
          m = verification.pair_metrics(e, labels, fprs=(1e-4,))
          row[name] = [round(m['tpr@fpr=1e-04'], 3), round(m['auroc'], 3),
                       round(verification.top1_identification(e, labels, is_register), 3)]
        print(json.dumps(row), flush=True)


if __name__ == '__main__':
  main()
