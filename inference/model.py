"""Loading a trained embedder for inference (JAX side).

Three sources, one result (inference.embedding.EmbeddingModel):
- a training workdir: workdir/config.json + the latest orbax checkpoint in workdir/checkpoints;
  only params['model'] and batch_stats are restored (no optimizer state shapes needed);
- a `jax.export` artefact written by inference/export.py (`*.jaxexport` + its `.json`);
- an ONNX file, through inference/onnx_model.py (no JAX needed there).
"""
import hashlib
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from errors import CorruptFileError, InputError
import file_io
from inference.embedding import EmbeddingModel, read_export_metadata
from inference.images import default_preprocessing
from models import uncertainty as uncertainty_lib
from models.embedder import build_model
from models.release_io import abstract_variables  # the embedder's shapes, as a release reads them

EXPORT_STEM = 'embedder'  # export_dir/embedder.{jaxexport,onnx,json}


def model_fingerprint(variables, model_config, preprocessing):
  """sha256 of the parameter bytes (in tree order, with paths, shapes, dtypes), the model
  config and the preprocessing: two models agree on it only if they embed identically."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    leaf = np.asarray(leaf)
    h.update(f'{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape};'.encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  h.update(json.dumps(model_config, sort_keys=True).encode())
  h.update(json.dumps(preprocessing, sort_keys=True).encode())
  return h.hexdigest()[:16]


def make_embed_fn(model, variables):
  """uint8 [B, S, S, 3] -> float32 [B, D] L2-normalised; variables are closed over (constants),
  which is also what export.py serialises."""
  def embed(images):
    e = model.apply(variables, images, train=False).astype(jnp.float32)
    return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
  return embed


def from_variables(model_config, variables, image_size, *, preprocessing=None, source=''):
  """An EmbeddingModel from a model config and {'params', 'batch_stats'} variables."""
  model_config = ml_collections.ConfigDict(model_config)
  preprocessing = preprocessing or default_preprocessing(image_size)
  variables = jax.tree.map(np.asarray, variables)
  model = build_model(model_config)
  fn = jax.jit(make_embed_fn(model, variables))
  config_dict = model_config.to_dict()
  return EmbeddingModel(
      batch_fn=fn, preprocessing=preprocessing, embed_dim=int(model_config.embed_dim),
      fingerprint=model_fingerprint(variables, config_dict, preprocessing), source=source,
      model_config=config_dict, variables=variables)


def attach_uncertainty(model, head_config, head_variables, source=''):
  """Adds a trained uncertainty head (models/uncertainty.py) to a JAX EmbeddingModel: classify
  then reports each capture's uncertainty. The embedding, and so the fingerprint a registry
  checks, is unchanged."""
  if model.variables is None:
    raise InputError(f'{source}: an uncertainty head needs the embedder\'s variables (a '
                     'workdir or released model, not an export)')
  head_config = dict(head_config)
  head = uncertainty_lib.UncertaintyHead(**head_config)
  head_variables = jax.tree.map(np.asarray, head_variables)
  embedder = build_model(ml_collections.ConfigDict(model.model_config))
  model.uncertain_fn = jax.jit(uncertainty_lib.make_embed_uncertain_fn(
      embedder, model.variables, head, head_variables))
  model.uncertainty_fingerprint = model_fingerprint(head_variables, head_config, {})
  model.uncertainty_variables = head_variables
  model.uncertainty_config = head_config
  return model


def head_config_of(training_config, embed_dim):
  u = training_config.uncertainty
  return {'embed_dim': int(embed_dim), 'hidden': int(u.hidden),
          'init_log_var': float(u.init_log_var), 'features': u.get('features', 'squeezed')}


def load_uncertainty_workdir(workdir, config):
  """A workdir of configs/uncertainty.py -> its frozen base model with the trained head."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from workdir import quiet_asyncio  # pylint: disable=import-outside-toplevel
  base = load_model(config.uncertainty.base)
  head_config = head_config_of(config, base.embed_dim)
  size = base.preprocessing['image_size']
  ckpt_dir = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step()
  if step is None:
    raise InputError(f'{ckpt_dir}: no finished checkpoint of the uncertainty head')
  squeezed = jax.eval_shape(
      lambda x: uncertainty_lib.embed_and_squeezed(
          build_model(ml_collections.ConfigDict(base.model_config)), base.variables, x,
          head_config['features'])[1],
      jax.ShapeDtypeStruct((1, size, size, 3), jnp.uint8))
  abstract = jax.eval_shape(lambda x: uncertainty_lib.UncertaintyHead(**head_config).init(
      jax.random.PRNGKey(0), x), jax.ShapeDtypeStruct(squeezed.shape, jnp.float32))
  target = {'params': abstract['params'], 'batch_stats': abstract['batch_stats']}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  with quiet_asyncio():
    restored = manager.restore(step, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
  manager.close()
  base.source = f'{base.source} + uncertainty head {workdir} (step {step})'
  return attach_uncertainty(base, head_config, restored, workdir)


def read_workdir_config(workdir):
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise InputError(f'{workdir}: no config.json (not a training workdir)')
  config = file_io.read_json(path, 'training config')
  for section, key in (('model', None), ('data', 'image_size')):
    if not isinstance(config.get(section), dict) or (key and key not in config[section]):
      raise CorruptFileError(f'{path}: training config lacks {section}'
                             + (f'.{key}' if key else ''))
  return ml_collections.ConfigDict(config)


def load_checkpoint(workdir, step=None):
  """Latest (or given) checkpoint of a training workdir -> EmbeddingModel. A latest step that
  does not read back (corrupt) is reported on stderr and the next older one used."""
  import orbax.checkpoint as ocp  # imported here: the export/ONNX paths do not need it
  from workdir import quiet_asyncio
  config = read_workdir_config(workdir)
  if config.get('task', 'embed') == 'uncertainty':
    return load_uncertainty_workdir(workdir, config)
  ckpt_dir = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  if not os.path.isdir(ckpt_dir):
    raise InputError(f'{workdir}: no checkpoints/ folder (training has not saved yet?)')
  manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
  if not steps or steps[0] not in manager.all_steps():
    raise InputError(f'{ckpt_dir}: no finished checkpoint'
                     + (f' at step {step}' if step is not None else ''))
  image_size = int(config.data.image_size)
  abstract = abstract_variables(config.model, image_size)
  # The TrainState keeps the backbone+embedding params under params['model'] (the margin head's
  # centres sit beside them and are not needed here). Restore just these leaves, as numpy.
  target = {'params': {'model': abstract['params']}}
  if 'batch_stats' in abstract:
    target['batch_stats'] = abstract['batch_stats']
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  failed = []
  for step in steps:
    try:
      with quiet_asyncio():
        restored = manager.restore(step, args=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True))
      break
    except Exception as e:  # pylint: disable=broad-except  (tensorstore raises bare Exception)
      failed.append(f'step {step}: {type(e).__name__}: {str(e).splitlines()[0][:160]}')
  else:
    raise CorruptFileError(f'{ckpt_dir}: no checkpoint reads back with config.json\'s model '
                           f'(corrupt, or the model changed): {failed[0]}')
  if failed:
    print(f'warning: {ckpt_dir}: skipped unreadable {"; ".join(failed)}; using step {step}',
          file=sys.stderr)
  variables = {'params': restored['params']['model']}
  if 'batch_stats' in restored:
    variables['batch_stats'] = restored['batch_stats']
  return from_variables(config.model, variables, image_size,
                        source=f'{workdir} (step {step})')


def deserialize_jax_export(path):
  """A `*.jaxexport` file -> jax.export.Exported; a damaged file is one CorruptFileError."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    return jax.export.deserialize(bytearray(data))
  except Exception as e:  # pylint: disable=broad-except  (flatbuffer parsing of untrusted bytes
    # fails with whatever the parser trips on: struct.error, IndexError, ...)
    raise CorruptFileError(f'{path}: not a readable jax.export file ({len(data)} bytes; '
                           f'truncated or damaged? {type(e).__name__})') from None


def load_jax_export(path):
  """A `*.jaxexport` written by inference/export.py -> EmbeddingModel (no flax model needed)."""
  meta = read_export_metadata(path)
  return EmbeddingModel.from_exported(jax.jit(deserialize_jax_export(path).call), meta, path)


def load_model(path):
  """Dispatch on what `path` is: training workdir, export folder, .jaxexport or .onnx file."""
  if os.path.isdir(path):
    from inference import released  # pylint: disable=import-outside-toplevel
    if released.is_release(path):
      return released.load_release(path)
    if os.path.isfile(os.path.join(path, 'config.json')):
      return load_checkpoint(path)
    for ext in ('.jaxexport', '.onnx'):
      candidate = os.path.join(path, EXPORT_STEM + ext)
      if os.path.isfile(candidate):
        return load_model(candidate)
    raise InputError(f'{path}: neither a training workdir (config.json) nor an export folder')
  if path.endswith('.jaxexport') and os.path.isfile(path):
    return load_jax_export(path)
  if path.endswith('.onnx') and os.path.isfile(path):
    from inference.onnx_model import load_onnx
    try:
      return load_onnx(path)
    except InputError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (onnxruntime raises its own pybind
      # types for a bad file: InvalidProtobuf, Fail, InvalidGraph, ...)
      raise CorruptFileError(f'{path}: not a readable ONNX model (truncated or damaged? '
                             f'{type(e).__name__}: {str(e).splitlines()[0][:160]})') from None
  raise InputError(f'{path}: no such workdir or model artefact (.jaxexport / .onnx)')
