"""Reading a released-model folder's variables (model.json + variables.msgpack, float16 stored).

Here, below train and inference, so that both can load a release: inference/released.py wraps it
into an EmbeddingModel, train_uncertainty.py trains a head on top of it.
"""
import json
import os

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from errors import CorruptFileError, InputError
from models.embedder import build_model

CONFIG_FILE, VARIABLES_FILE = 'model.json', 'variables.msgpack'


def is_release(path):
  return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isfile(
      os.path.join(path, VARIABLES_FILE))


def abstract_variables(model_config, image_size, build=build_model):
  """Shapes/dtypes of {'params', 'batch_stats'} without allocating them; `build` makes the
  module from the model config (the embedder's build_model, or the corner detector's)."""
  model = build(model_config)
  dummy = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.uint8)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), dummy)


def read_msgpack_like(path, abstract, what):
  """float32 numpy variables shaped like `abstract` from a msgpack file."""
  try:
    with open(path, 'rb') as f:
      stored = flax.serialization.msgpack_restore(f.read())
    return jax.tree.map(lambda a, s: np.asarray(a, np.float32).reshape(s.shape),
                        {k: stored[k] for k in abstract}, dict(abstract))
  except Exception as e:  # pylint: disable=broad-except  (msgpack raises many types on bad bytes)
    raise CorruptFileError(f'{path}: does not hold {what} (truncated or damaged? '
                           f'{type(e).__name__})') from None


def read_release(path, build=build_model, what='released model'):
  """-> (model_config dict, variables {'params', 'batch_stats'} float32 numpy, image_size, meta).

  `build` as in abstract_variables; `what` names the kind of release in the errors."""
  cfg_path, var_path = os.path.join(path, CONFIG_FILE), os.path.join(path, VARIABLES_FILE)
  if not is_release(path):
    raise InputError(f'{path}: not a {what} ({CONFIG_FILE} + {VARIABLES_FILE})')
  try:
    with open(cfg_path) as f:
      meta = json.load(f)
    model_config, image_size = meta['model'], int(meta['image_size'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CorruptFileError(f'{cfg_path}: not a readable {what} config ({type(e).__name__})') from None
  abstract = abstract_variables(ml_collections.ConfigDict(model_config), image_size, build)
  variables = read_msgpack_like(var_path, abstract, f"this {what}'s variables")
  return model_config, variables, image_size, meta
