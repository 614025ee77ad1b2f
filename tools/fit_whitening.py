r"""Fits the 'grid_pca' head's whitening on rendered paperwork and writes a released-model folder.

  python tools/fit_whitening.py --config=configs/release_grid.py --out=released/docembed-v2

The backbone is the config's (ImageNet weights from config.model.pretrained, as loaded for
training); the head's Linear layer becomes the PCA whitening of the region-pooled features of
`captures_per_template` captures of each training template (input_pipeline/rendered.py, the
training captures: photos and scans of blank and filled-in pages): centred on their mean, each
kept direction scaled by 1 / (its std + eps x the largest std) (times the largest std). No gradient step. Prints one JSON
line: captures used, the variance share the kept directions carry, and the largest embedding
change from float16 storage (refuses to write above --max_diff).
"""
import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from configs.load import load_config  # pylint: disable=g-import-not-at-top
from errors import ConfigError  # pylint: disable=g-import-not-at-top
from inference import released  # pylint: disable=g-import-not-at-top
from input_pipeline import rendered  # pylint: disable=g-import-not-at-top
from models import pretrained  # pylint: disable=g-import-not-at-top
from models.embedder import build_model  # pylint: disable=g-import-not-at-top
from models.whitening import fit_pca_whitening  # pylint: disable=g-import-not-at-top


def rendered_captures(config):
  """The captures the whitening is fitted on: `captures_per_template` of each training template."""
  pw = config.data.paperwork
  docs = rendered.RenderedDocuments(rendered.train_templates(pw), pw, int(config.data.image_size))
  return rendered.captures_of_templates(docs, int(config.whiten.captures_per_template))


def fit(config):
  """(model_config dict, float32 variables, 16 of the captures for checks, info) of the whitened
  model."""
  m = config.model
  if m.head != 'grid_pca':
    raise ConfigError(f'config.model.head={m.head!r}: fit_whitening fits the grid_pca head only')
  size = int(config.data.image_size)
  model = build_model(m)
  variables = model.init(jax.random.PRNGKey(config.seed), jnp.zeros((1, size, size, 3), jnp.uint8))
  variables = jax.tree.map(np.asarray, variables)
  if m.pretrained:
    variables = pretrained.init_backbone_from_pretrained(variables, m.backbone, m.pretrained)
  pooled_fn = jax.jit(lambda v, x: model.apply(v, x, mutable=['intermediates'])[1][
      'intermediates']['head']['squeezed'][0])
  images, labels = rendered_captures(config)
  b = int(config.whiten.batch)
  pooled = np.concatenate([np.asarray(pooled_fn(variables, images[i:i + b]))
                           for i in range(0, len(images), b)])
  kernel, bias, kept = fit_pca_whitening(pooled, int(m.embed_dim), float(config.whiten.eps))
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
  tmp_dir = args.out.rstrip('/') + '.new'
  released.save_release(tmp_dir, model_config, variables, size, info)
  stored = released.load_release(tmp_dir)
  diff = float(np.abs(stored.embed(check) - direct.embed(check)).max())
  print(json.dumps(dict(out=args.out, max_abs_embedding_diff=diff, **{
      k: v for k, v in info.items() if k != 'recipe'})))
  if not diff <= args.max_diff:  # NaN too
    shutil.rmtree(tmp_dir)
    sys.exit(f'fit_whitening: float16 storage changes embeddings by {diff:.2e} '
             f'(> --max_diff {args.max_diff}); nothing written to {args.out}')
  if os.path.isdir(args.out):
    shutil.rmtree(args.out)
  os.replace(tmp_dir, args.out)


if __name__ == '__main__':
  main()
