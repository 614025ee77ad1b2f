"""The released embedder: a small folder checked into the repository, used when no --checkpoint.

A release is `model.json` (model config, image size, preprocessing, how it was made and scored)
and `variables.msgpack` (flax serialisation of {'params', 'batch_stats'}, stored as float16 to
keep the folder a few MB; loaded back as float32). Written by `python tools/release_model.py`.
"""
import json
import os

from errors import CorruptFileError, InputError
import file_io
# JAX, flax and the model are imported inside the functions: inference/cli.py reads DEFAULT_DIR
# for every command, and commands that embed nothing must not pay for JAX.

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'released', 'docembed-v1')
CONFIG_FILE, VARIABLES_FILE = 'model.json', 'variables.msgpack'


def is_release(path):
  return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isfile(
      os.path.join(path, VARIABLES_FILE))


def save_release(out_dir, model_config, variables, image_size, info):
  """Writes a release folder; returns the float16-stored variables as they will load."""
  import flax.serialization  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  os.makedirs(out_dir, exist_ok=True)
  half = jax.tree.map(lambda a: np.asarray(a, np.float32).astype(np.float16), variables)
  file_io.write_bytes_atomic(os.path.join(out_dir, VARIABLES_FILE),
                             flax.serialization.msgpack_serialize(half))
  meta = dict(model=dict(model_config), image_size=int(image_size), info=info)
  file_io.write_bytes_atomic(os.path.join(out_dir, CONFIG_FILE),
                             json.dumps(meta, indent=1).encode())
  return jax.tree.map(lambda a: a.astype(np.float32), half)


def load_release(path):
  """A release folder -> EmbeddingModel."""
  import flax.serialization  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from inference import model as model_lib  # pylint: disable=import-outside-toplevel
  cfg_path, var_path = os.path.join(path, CONFIG_FILE), os.path.join(path, VARIABLES_FILE)
  if not is_release(path):
    raise InputError(f'{path}: not a released model ({CONFIG_FILE} + {VARIABLES_FILE})')
  try:
    with open(cfg_path) as f:
      meta = json.load(f)
    model_config, image_size = meta['model'], int(meta['image_size'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CorruptFileError(f'{cfg_path}: not a readable release config ({type(e).__name__})') from None
  abstract = model_lib.abstract_variables(ml_collections.ConfigDict(model_config),
                                          image_size)
  try:
    with open(var_path, 'rb') as f:
      stored = flax.serialization.msgpack_restore(f.read())
    variables = jax.tree.map(lambda a, s: np.asarray(a, np.float32).reshape(s.shape),
                             {k: stored[k] for k in abstract}, dict(abstract))
  except Exception as e:  # pylint: disable=broad-except  (msgpack raises many types on bad bytes)
    raise CorruptFileError(f'{var_path}: does not hold this model\'s variables (truncated or '
                           f'damaged? {type(e).__name__})') from None
  return model_lib.from_variables(model_config, variables, image_size, source=path)
