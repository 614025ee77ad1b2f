r"""Fits the 'grid_pca' head's whitening on rendered paperwork and writes a released-model folder.

  python tools/fit_whitening.py --config=configs/release_grid.py --out=released/docembed-v4

The backbone is the config's (ImageNet weights from config.model.pretrained, as loaded for
training); the head's Linear layer becomes the PCA whitening of the region-pooled features of
`captures_per_template` captures of each training template (input_pipeline/rendered.py, the
training captures: photos and scans of blank and filled-in pages): centred on their mean, each
kept direction scaled by (the largest std) / (its std + eps x the largest std) (models/
whitening.py). No gradient step. Prints one JSON line: captures used, the variance share the kept directions carry, and the largest embedding
change from float16 storage (refuses to write above --max_diff).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from configs.load import load_config  # pylint: disable=g-import-not-at-top
from errors import ConfigError  # pylint: disable=g-import-not-at-top
from inference import released  # pylint: disable=g-import-not-at-top
from input_pipeline import rendered  # pylint: disable=g-import-not-at-top
from models import pretrained  # pylint: disable=g-import-not-at-top
from models.embedder import build_model  # pylint: disable=g-import-not-at-top
from models.whitening import fit_pca_whitening, part_scales  # pylint: disable=g-import-not-at-top


def rendered_captures(config):
  """The captures the whitening is fitted on: `captures_per_template` of each training template."""
  return rendered.training_captures(config.data.paperwork, int(config.data.image_size),
                                    int(config.whiten.captures_per_template))


def part_sizes(model_config, variables, width):
  """Widths of the pooled vector's parts: the last map's regions, then each side tap's (a
  MobileNetV2 block's output channels, read off its projection's batch-norm statistics)."""
  stats = variables['batch_stats'].get('MobileNetV2_0', {})
  taps = [int(model_config.get('tap_grid', 4)) ** 2 *
          int(stats[f'features_{block}_conv_3']['mean'].shape[0])
          for block in model_config.get('tap_blocks', ())]
  return [width - sum(taps)] + taps


def fit(config):
  """(model_config dict, float32 variables, 16 of the captures for checks, info) of the whitened
  model."""
  m = config.model
  if m.head != 'grid_pca':
    raise ConfigError(f'config.model.head={m.head!r}: fit_whitening fits the grid_pca head only')
  size = int(config.data.image_size)
  model = build_model(m)
  variables = pretrained.init_embedder_variables(model, m, size, config.seed)
  pooled_fn = jax.jit(lambda v, x: model.apply(v, x, mutable=['intermediates'])[1][
      'intermediates']['head']['squeezed'][0])
  images, labels = rendered_captures(config)
  b = int(config.whiten.batch)
  pooled = np.concatenate([np.asarray(pooled_fn(variables, images[i:i + b]))
                           for i in range(0, len(images), b)])
  # Each part (the last map's regions, then each side tap's) weighted as the config says after
  # scaling to one RMS norm (the tap's 96 channels would otherwise count for little beside the
  # last map's 1,280); the scale is folded into the kernel, so the head stays one Linear layer.
  scale = part_scales(pooled, part_sizes(m, variables, pooled.shape[1]),
                      config.whiten.get('part_weights', ()))
  kernel, bias, kept = fit_pca_whitening(pooled * scale, int(m.embed_dim), float(config.whiten.eps))
  kernel = kernel * scale[:, None]
  variables = {k: dict(v) for k, v in variables.items()}
  head = dict(variables['params']['head'])
  head['whiten'] = {'kernel': kernel.astype(np.float32), 'bias': bias.astype(np.float32)}
  variables['params']['head'] = head
  info = dict(captures=int(len(images)), templates=int(len(np.unique(labels))),
              feature_dim=int(pooled.shape[1]), kept_variance_share=round(kept, 4))
  return m.to_dict(), variables, images[:16], info


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/release_grid.py', help='a config file[:arg]')
  p.add_argument('--out', required=True, help='the release folder to write')
  p.add_argument('--max_diff', type=float, default=5e-3,
                 help='largest embedding change float16 storage may make (v2: 2.4e-3)')
  args = p.parse_args(argv)
  try:
    config = load_config(args.config)
    model_config, variables, check, info = fit(config)
  except ConfigError as e:
    sys.exit(f'fit_whitening: {e}')
  from inference import model as model_lib  # pylint: disable=g-import-not-at-top
  size = int(config.data.image_size)
  direct = model_lib.from_variables(config.model, variables, size)
  info.update(command=f'python tools/fit_whitening.py --config={args.config} --out={args.out}',
              recipe=config.to_dict())
  diff, written = released.publish_checked(
      args.out, lambda tmp: released.save_release(tmp, model_config, variables, size, info),
      lambda tmp: np.abs(released.load_release(tmp).embed(check) - direct.embed(check)).max(),
      args.max_diff)
  print(json.dumps(dict(out=args.out, max_abs_embedding_diff=diff, **{
      k: v for k, v in info.items() if k != 'recipe'})))
  if not written:
    sys.exit(f'fit_whitening: float16 storage changes embeddings by {diff:.2e} '
             f'(> --max_diff {args.max_diff}); nothing written to {args.out}')


if __name__ == '__main__':
  main()
