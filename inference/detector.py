"""Loading the corner detector for inference (issue 15): a training workdir or a release folder.

`load_detector(path)` -> CornerDetectorModel, whose `detect(rgb)` gives the document's quad in
the photo's pixels (clockwise from its top-left) and a confidence in [0, 1] (the presence score).
A release folder is written like the embedder's (inference/released.py: model.json + float16
variables.msgpack) by `python tools/release_detector.py`.
"""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from errors import CorruptFileError, InputError
from input_pipeline.image_io import stretch_to_square
from inference import released
from models import corners as corners_lib

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'released', 'corners-v1')


@dataclasses.dataclass
class CornerDetectorModel:
  batch_fn: object        # uint8 [B, S, S, 3] -> {'corners': [B, 4, 2] in [0, 1], 'presence': [B]}
  image_size: int
  source: str
  model_config: dict
  variables: dict
  fingerprint: str = ''   # sha256 of the variables and config (inference.model.model_fingerprint)

  def detect_batch(self, squares):
    """uint8 [B, S, S, 3] -> (corners [B, 4, 2] in [0, 1], confidence [B])."""
    out = jax.device_get(self.batch_fn(jnp.asarray(squares)))
    return np.asarray(out['corners']), 1.0 / (1.0 + np.exp(-np.asarray(out['presence'])))

  def detect(self, rgb):
    """uint8 [H, W, 3] -> {'quad': [4, 2] px of the photo, 'confidence': float}."""
    corners, confidence = self.detect_batch(stretch_to_square(rgb, self.image_size)[None])
    h, w = rgb.shape[:2]
    return {'quad': corners[0] * np.array([w, h], np.float64), 'confidence': float(confidence[0])}


def abstract_variables(model_config, image_size):
  model = corners_lib.build_detector(model_config)
  dummy = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.uint8)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), dummy)


def from_variables(model_config, variables, image_size, source=''):
  model_config = ml_collections.ConfigDict(model_config)
  variables = jax.tree.map(np.asarray, variables)
  model = corners_lib.build_detector(model_config)

  def detect(images):
    out = model.apply(variables, images, train=False)
    return {'corners': out['peak_corners'], 'presence': out['presence']}

  from inference.model import model_fingerprint  # pylint: disable=import-outside-toplevel
  config = model_config.to_dict()
  return CornerDetectorModel(jax.jit(detect), int(image_size), source, config, variables,
                             model_fingerprint(variables, config, {'image_size': int(image_size)}))


def load_workdir(workdir, step=None):
  """The latest (or given) checkpoint of a corner-detector training workdir."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from inference.model import read_workdir_config  # pylint: disable=import-outside-toplevel
  from workdir import quiet_asyncio  # pylint: disable=import-outside-toplevel
  config = read_workdir_config(workdir)
  if config.get('task') != 'corners':
    raise InputError(f'{workdir}: not a corner-detector workdir (config.task is not "corners")')
  ckpt_dir = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step() if step is None else step
  if step is None or step not in manager.all_steps():
    raise InputError(f'{ckpt_dir}: no finished checkpoint' + (f' at step {step}' if step else ''))
  size = int(config.data.image_size)
  abstract = abstract_variables(config.model, size)
  target = {'params': {'model': abstract['params']}, 'batch_stats': abstract['batch_stats']}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  with quiet_asyncio():
    restored = manager.restore(step, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
  variables = {'params': restored['params']['model'], 'batch_stats': restored['batch_stats']}
  return from_variables(config.model, variables, size, source=f'{workdir} (step {step})')


def load_release(path):
  cfg_path = os.path.join(path, released.CONFIG_FILE)
  var_path = os.path.join(path, released.VARIABLES_FILE)
  import flax.serialization  # pylint: disable=import-outside-toplevel
  try:
    with open(cfg_path) as f:
      meta = json.load(f)
    model_config, size = ml_collections.ConfigDict(meta['model']), int(meta['image_size'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CorruptFileError(f'{cfg_path}: not a readable detector release ({type(e).__name__})') from None
  abstract = abstract_variables(model_config, size)
  try:
    with open(var_path, 'rb') as f:
      stored = flax.serialization.msgpack_restore(f.read())
    variables = jax.tree.map(lambda a, s: np.asarray(a, np.float32).reshape(s.shape),
                             {k: stored[k] for k in abstract}, dict(abstract))
  except Exception as e:  # pylint: disable=broad-except  (msgpack raises many types on bad bytes)
    raise CorruptFileError(f'{var_path}: does not hold this detector\'s variables '
                           f'({type(e).__name__})') from None
  return from_variables(model_config, variables, size, source=path)


def load_detector(path=None):
  """A corner-detector training workdir or release folder (default: released/corners-v1)."""
  path = path or DEFAULT_DIR
  if released.is_release(path):
    return load_release(path)
  if os.path.isfile(os.path.join(path, 'config.json')):
    return load_workdir(path)
  raise InputError(f'{path}: neither a corner-detector release (model.json + variables.msgpack) '
                   'nor a training workdir (config.json)')
