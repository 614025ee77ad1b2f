"""Loading the corner detector for inference (issue 15): a training workdir, a release folder, or
an export (inference/export.py `export_detector`: detector.onnx / detector.jaxexport + detector.json).

`load_detector(path)` -> CornerDetectorModel, whose `detect(rgb)` gives the document's quad in
the photo's pixels (clockwise from its top-left) and a confidence in [0, 1] (the presence score).
A release folder is written like the embedder's (inference/released.py: model.json + float16
variables.msgpack) by `python tools/release_detector.py`. An exported ONNX detector runs with
numpy + Pillow + onnxruntime alone: JAX, flax and the model are imported inside the functions
that need them, never at the top of this module.
"""
import dataclasses
import os

import numpy as np

from errors import CorruptFileError, InputError
import file_io
from input_pipeline.image_io import stretch_to_square
from inference import corner_peaks
from inference import quads
from inference import released

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'released', 'corners-v3')
EXPORT_STEM = 'detector'  # export_dir/detector.{jaxexport,onnx,json}, beside embedder.*
EXPORT_KIND = 'corner_detector'
# [B, 4, 2] in [0, 1] (peak soft-argmax), [B] logit, [B, S/8, S/8, 4] corner heatmap logits (for
# inference/corner_peaks.py). Exports made before the heatmaps have the first two only.
OUTPUTS = ('corners', 'presence', 'heatmaps')
LEGACY_OUTPUTS = OUTPUTS[:2]
# The second, zoomed pass (CornerDetectorModel.detect): the first pass's quad, its bounding box
# grown by this share of its size on each side (clipped to the photo), detected again. At 192 px
# a card that covers a fifth of a phone frame is ~80 px wide; cropped, it fills the detector's
# input and its corners land ~2x finer. Chosen on rendered held-out photos, not on real ones
# (benchmarks/corners_zoom.py).
DEFAULT_ZOOM = 0.15
# Crops are kept within the frame shapes the detector was trained on (configs/corners.py
# frame_aspects, 9:16 to 16:9), by growing the shorter side.
ZOOM_ASPECTS = (9 / 16, 16 / 9)
ZOOM_MIN_CONFIDENCE = 0.5  # below this the first pass found no document: nothing to zoom on
# Each corner is chosen among its heatmap's two highest peaks so that the four make a page's
# outline (inference/corner_peaks.py): the summed log-masses of the peaks minus this weight x the
# parallelogram residual over the diagonal. 0: each map's highest peak, as before. Chosen on
# rendered held-out photos, not on real ones (benchmarks/corners_zoom.py --shape_priors).
DEFAULT_SHAPE_PRIOR = 8.0


def zoom_box(quad, width, height, margin):
  """(x0, y0, x1, y1) integer pixels of the crop for the zoomed pass: the quad's bounding box
  grown by `margin` of its size on each side, its aspect within ZOOM_ASPECTS, clipped to the
  photo; None when that leaves too little to look at (under 16 px a side)."""
  q = np.asarray(quad, np.float64)
  lo, hi = q.min(0), q.max(0)
  centre, size = (lo + hi) / 2, (hi - lo) * (1 + 2 * margin)
  bw, bh = max(size[0], 1.0), max(size[1], 1.0)
  bh = max(bh, bw * ZOOM_ASPECTS[0])
  bw = max(bw, bh / ZOOM_ASPECTS[1])
  x0, x1 = max(centre[0] - bw / 2, 0.0), min(centre[0] + bw / 2, float(width))
  y0, y1 = max(centre[1] - bh / 2, 0.0), min(centre[1] + bh / 2, float(height))
  box = [int(round(v)) for v in (x0, y0, x1, y1)]
  if box[2] - box[0] < 16 or box[3] - box[1] < 16:
    return None
  return box


@dataclasses.dataclass
class CornerDetectorModel:
  batch_fn: object        # uint8 [B, S, S, 3] -> (corners [B, 4, 2] in [0, 1], presence logit
                          # [B], heatmaps [B, S/8, S/8, 4] unless outputs is LEGACY_OUTPUTS)
  image_size: int
  source: str
  model_config: dict
  variables: dict         # None for an export (it carries its weights inside)
  fingerprint: str = ''   # sha256 of the variables and config (inference.model.model_fingerprint)
  outputs: tuple = OUTPUTS

  def detect_outputs(self, squares):
    """uint8 [B, S, S, 3] -> {name: float32 numpy} for each of self.outputs."""
    got = self.batch_fn(np.asarray(squares, np.uint8))
    return {name: np.asarray(v, np.float32) for name, v in zip(self.outputs, got)}

  def detect_logits(self, squares):
    """uint8 [B, S, S, 3] -> (corners [B, 4, 2] in [0, 1], presence logit [B]) as numpy."""
    out = self.detect_outputs(squares)
    return out['corners'], out['presence']

  def detect_batch(self, squares):
    """uint8 [B, S, S, 3] -> (corners [B, 4, 2] in [0, 1], confidence [B])."""
    corners, presence = self.detect_logits(squares)
    return corners, 1.0 / (1.0 + np.exp(-presence))

  def detect_once(self, rgb, shape_prior=DEFAULT_SHAPE_PRIOR):
    """uint8 [H, W, 3] -> {'quad': [4, 2] px of the photo, 'confidence': float}: one pass over
    the whole photo stretched to the detector's square; each corner the highest peak of its
    heatmap, or with shape_prior > 0 the peaks chosen together (inference/corner_peaks.py)."""
    out = self.detect_outputs(stretch_to_square(rgb, self.image_size)[None])
    h, w = rgb.shape[:2]
    confidence = float(1.0 / (1.0 + np.exp(-out['presence'][0])))
    if not shape_prior:
      return {'quad': out['corners'][0] * np.array([w, h], np.float64), 'confidence': confidence}
    if 'heatmaps' not in out:
      raise InputError(f'{self.source}: this detector export has no heatmaps output (made before '
                       'the shape prior); export it again (inference.cli export --detector) or '
                       'pass --detector-shape-prior 0')
    xy, mass = corner_peaks.peaks(out['heatmaps'][0])
    return {'quad': corner_peaks.consistent_quad(xy, mass, (w, h), shape_prior),
            'confidence': confidence}

  def detect(self, rgb, zoom=DEFAULT_ZOOM, min_confidence=ZOOM_MIN_CONFIDENCE,
             shape_prior=DEFAULT_SHAPE_PRIOR):
    """uint8 [H, W, 3] -> {'quad': [4, 2] px of the photo, 'confidence': float, 'zoomed': bool}.

    The whole photo first; then, when a document was found (confidence >= min_confidence) and
    zoom > 0, again on the crop around its quad (zoom_box), whose corners replace the first
    ones. The confidence is the first pass's: whether the photo shows a document at all (the
    crop nearly always does). A zoomed quad that cannot be a document's outline
    (quads.quad_problem) where the first one could is dropped for the first one. shape_prior:
    as detect_once, in both passes."""
    found = dict(self.detect_once(rgb, shape_prior), zoomed=False)
    if not zoom or found['confidence'] < min_confidence:
      return found
    h, w = rgb.shape[:2]
    box = zoom_box(found['quad'], w, h, zoom)
    if box is None:
      return found
    x0, y0, x1, y1 = box
    close = self.detect_once(np.ascontiguousarray(rgb[y0:y1, x0:x1]), shape_prior)
    quad = close['quad'] + np.array([x0, y0], np.float64)
    if quads.quad_problem(quad, w, h) and not quads.quad_problem(found['quad'], w, h):
      return found
    return dict(found, quad=quad, zoomed=True)

  def metadata(self):
    """What an export writes beside its artefact (detector.json): the same fingerprint, so a
    registry rectified with this detector accepts the exported one."""
    return {'kind': EXPORT_KIND, 'fingerprint': self.fingerprint,
            'image_size': int(self.image_size), 'model_config': self.model_config,
            'outputs': list(self.outputs)}


def abstract_variables(model_config, image_size):
  from models import corners as corners_lib  # pylint: disable=import-outside-toplevel
  from models import release_io  # pylint: disable=import-outside-toplevel
  return release_io.abstract_variables(model_config, image_size, corners_lib.build_detector)


def detect_fn(model_config, variables):
  """uint8 [B, S, S, 3] -> (corners, presence logit): the peak soft-argmax corners that inference
  uses (models/corners.py peak_soft_argmax), variables closed over. What from_variables jits and
  inference/export.py serialises (with the model config it makes portable / ONNX-friendly)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from models import corners as corners_lib  # pylint: disable=import-outside-toplevel
  model = corners_lib.build_detector(ml_collections.ConfigDict(model_config))

  def detect(images):
    out = model.apply(variables, images, train=False)
    return out['peak_corners'], out['presence'], out['heatmaps']
  return detect


def from_variables(model_config, variables, image_size, source=''):
  import jax  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from inference.model import model_fingerprint  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict(model_config).to_dict()
  variables = jax.tree.map(np.asarray, variables)
  return CornerDetectorModel(jax.jit(detect_fn(config, variables)), int(image_size), source,
                             config, variables,
                             model_fingerprint(variables, config, {'image_size': int(image_size)}))


def load_workdir(workdir, step=None):
  """The latest (or given) checkpoint of a corner-detector training workdir."""
  import jax  # pylint: disable=import-outside-toplevel
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
  from models import corners as corners_lib  # pylint: disable=import-outside-toplevel
  from models import release_io  # pylint: disable=import-outside-toplevel
  model_config, variables, size, _ = release_io.read_release(
      path, corners_lib.build_detector, 'detector release')
  return from_variables(model_config, variables, size, source=path)


def read_export_metadata(artefact_path):
  """export_dir/detector.json, written beside each artefact by inference/export.py."""
  meta_path = os.path.splitext(artefact_path)[0] + '.json'
  if not os.path.isfile(meta_path):
    raise InputError(f'{artefact_path}: missing metadata file {meta_path}')
  meta = file_io.read_json(meta_path, 'detector export metadata')
  if meta.get('kind') != EXPORT_KIND:
    raise InputError(f'{meta_path}: not a corner detector\'s export metadata (kind is '
                     f'{meta.get("kind")!r}, not {EXPORT_KIND!r})')
  size = meta.get('image_size')
  if not isinstance(size, int) or size < 1 or not isinstance(meta.get('fingerprint'), str) \
      or meta.get('outputs') not in (list(OUTPUTS), list(LEGACY_OUTPUTS)):
    raise CorruptFileError(f'{meta_path}: detector export metadata lacks or garbles image_size, '
                           f'fingerprint or outputs (want {list(OUTPUTS)})')
  return meta


def _from_export(batch_fn, meta, path):
  return CornerDetectorModel(batch_fn, meta['image_size'], path, meta.get('model_config', {}),
                             None, meta['fingerprint'], tuple(meta['outputs']))


def load_onnx(path, num_threads=None):
  """detector.onnx -> CornerDetectorModel run by onnxruntime (no JAX); num_threads as
  inference/onnx_model.session_options (None: onnxruntime's default)."""
  import onnxruntime as ort  # pylint: disable=import-outside-toplevel  (optional dependency)
  from inference.onnx_model import session_options  # pylint: disable=import-outside-toplevel
  meta = read_export_metadata(path)
  try:
    session = ort.InferenceSession(path, session_options(num_threads),
                                   providers=['CPUExecutionProvider'])
  except Exception as e:  # pylint: disable=broad-except  (onnxruntime raises its own pybind
    # types for a bad file: InvalidProtobuf, Fail, InvalidGraph, ...)
    raise CorruptFileError(f'{path}: not a readable ONNX model (truncated or damaged? '
                           f'{type(e).__name__}: {str(e).splitlines()[0][:160]})') from None
  names = [o.name for o in session.get_outputs()]
  if names != meta['outputs']:
    raise CorruptFileError(f'{path}: outputs {names}, not the {meta["outputs"]} its metadata '
                           'says')
  input_name = session.get_inputs()[0].name
  return _from_export(lambda images: session.run(None, {input_name: images}), meta, path)


def load_jax_export(path):
  """detector.jaxexport -> CornerDetectorModel (jax only; no flax model needed)."""
  import jax  # pylint: disable=import-outside-toplevel
  from inference.model import deserialize_jax_export  # pylint: disable=import-outside-toplevel
  meta = read_export_metadata(path)
  return _from_export(jax.jit(deserialize_jax_export(path).call), meta, path)


def find_release(fingerprint):
  """The detector release folder beside the default one (released/corners-*) whose variables
  have this fingerprint, or None: a registry rectified by an earlier default detector finds it."""
  root = os.path.dirname(DEFAULT_DIR)
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    path = os.path.join(root, name)
    if name.startswith('corners-') and released.is_release(path) and \
        load_release(path).fingerprint == fingerprint:
      return path
  return None


def load_detector(path=None, num_threads=None):
  """A corner detector: training workdir, release folder (default: released/corners-v3), export
  folder (detector.onnx, else detector.jaxexport), or a .onnx / .jaxexport file. num_threads:
  onnxruntime's threads for an ONNX detector."""
  path = path or DEFAULT_DIR
  if path.endswith(('.onnx', '.jaxexport')):
    if not os.path.isfile(path):
      raise InputError(f'{path}: no such detector file')
    return load_onnx(path, num_threads) if path.endswith('.onnx') else load_jax_export(path)
  if released.is_release(path):
    return load_release(path)
  # ONNX first: serving without JAX is what the export is for.
  for ext in ('.onnx', '.jaxexport'):
    candidate = os.path.join(path, EXPORT_STEM + ext)
    if os.path.isfile(candidate):
      return load_detector(candidate, num_threads)
  if os.path.isfile(os.path.join(path, 'config.json')):
    return load_workdir(path)
  raise InputError(f'{path}: neither a corner-detector release (model.json + variables.msgpack), '
                   'an export (detector.onnx / detector.jaxexport) nor a training workdir '
                   '(config.json)')
