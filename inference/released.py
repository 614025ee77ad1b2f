"""The released embedder: a small folder checked into the repository, used when no --checkpoint.

A release is `model.json` (model config, image size, preprocessing, how it was made and scored)
and `variables.msgpack` (flax serialisation of {'params', 'batch_stats'}, stored as float16 to
keep the folder a few MB; loaded back as float32). Written by `python tools/release_model.py`.
"""
import json
import os
import shutil

from errors import CorruptFileError
import file_io
# JAX, flax and the model are imported inside the functions: inference/cli.py reads DEFAULT_DIR
# for every command, and commands that embed nothing must not pay for JAX.

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'released', 'docembed-v4')
CONFIG_FILE, VARIABLES_FILE = 'model.json', 'variables.msgpack'
UNCERTAINTY_CONFIG, UNCERTAINTY_VARIABLES = 'uncertainty.json', 'uncertainty.msgpack'


def is_release(path):
  return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isfile(
      os.path.join(path, VARIABLES_FILE))


def _half(variables):
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  return jax.tree.map(lambda a: np.asarray(a, np.float32).astype(np.float16), variables)


def save_release(out_dir, model_config, variables, image_size, info):
  """Writes a release folder; returns the float16-stored variables as they will load."""
  import flax.serialization  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  os.makedirs(out_dir, exist_ok=True)
  half = _half(variables)
  file_io.write_bytes_atomic(os.path.join(out_dir, VARIABLES_FILE),
                             flax.serialization.msgpack_serialize(half))
  meta = dict(model=dict(model_config), image_size=int(image_size), info=info)
  file_io.write_bytes_atomic(os.path.join(out_dir, CONFIG_FILE),
                             json.dumps(meta, indent=1).encode())
  return jax.tree.map(lambda a: a.astype(np.float32), half)


def save_uncertainty(out_dir, head_config, head_variables, info):
  """Adds an uncertainty head (issue 14) to a release folder: uncertainty.json + .msgpack."""
  import flax.serialization  # pylint: disable=import-outside-toplevel
  file_io.write_bytes_atomic(os.path.join(out_dir, UNCERTAINTY_VARIABLES),
                             flax.serialization.msgpack_serialize(_half(head_variables)))
  file_io.write_bytes_atomic(os.path.join(out_dir, UNCERTAINTY_CONFIG), json.dumps(
      dict(head=dict(head_config), info=info), indent=1).encode())


def publish_checked(out_dir, write, measure, max_diff):
  """Replaces the folder `out_dir` only if what was written round-trips: `write(tmp)` fills a
  temporary folder beside it, `measure(tmp)` returns the largest difference the stored (float16)
  model makes against the source; above `max_diff` (or NaN) the temporary folder is removed and
  `out_dir` is left as it was. Returns (difference, written)."""
  tmp_dir = out_dir.rstrip('/') + '.new'
  write(tmp_dir)
  diff = float(measure(tmp_dir))
  if not diff <= max_diff:
    shutil.rmtree(tmp_dir)
    return diff, False
  if os.path.isdir(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp_dir, out_dir)
  return diff, True


def load_release(path):
  """A release folder -> EmbeddingModel (with its uncertainty head when the folder has one)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from inference import model as model_lib  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from models import release_io  # pylint: disable=import-outside-toplevel
  from models import uncertainty as uncertainty_lib  # pylint: disable=import-outside-toplevel
  from models.embedder import build_model  # pylint: disable=import-outside-toplevel
  model_config, variables, image_size, _ = release_io.read_release(path)
  model = model_lib.from_variables(model_config, variables, image_size, source=path)
  head_cfg = os.path.join(path, UNCERTAINTY_CONFIG)
  if os.path.isfile(head_cfg):
    try:
      head_config = dict(file_io.read_json(head_cfg, 'uncertainty head config')['head'])
      head = uncertainty_lib.UncertaintyHead(**head_config)
    except (KeyError, TypeError) as e:
      raise CorruptFileError(f'{head_cfg}: not a readable uncertainty head config '
                             f'({type(e).__name__})') from None
    squeezed = jax.eval_shape(
        lambda x: uncertainty_lib.embed_and_squeezed(
            build_model(ml_collections.ConfigDict(model_config)),
            model.variables, x, head.features)[1],
        jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.uint8))
    abstract = jax.eval_shape(lambda x: head.init(jax.random.PRNGKey(0), x),
                              jax.ShapeDtypeStruct(squeezed.shape, jnp.float32))
    head_variables = release_io.read_msgpack_like(
        os.path.join(path, UNCERTAINTY_VARIABLES), abstract, 'an uncertainty head')
    model_lib.attach_uncertainty(model, head_config, head_variables, path)
  return model
