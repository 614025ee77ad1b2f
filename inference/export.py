"""Export the embedding function (uint8 images -> L2-normalised embeddings) for serving.

Two artefacts in one folder, each with the same metadata JSON beside it (fingerprint, embed
width, preprocessing, model config), so a registry built with the checkpoint accepts both:
- embedder.jaxexport: `jax.export` serialisation, batch dimension symbolic; needs jax only.
- embedder.onnx: converted with jax2onnx (a direct jaxpr -> ONNX converter; no TF round trip),
  batch dimension symbolic; runs with onnxruntime alone (inference/onnx_model.py). Traced with
  lax convolutions (onnx_model_config), so every conv is one ONNX Conv that onnxruntime fuses
  with its batch norm and activation, then rewritten where onnxruntime would not fuse
  (inference/onnx_graph.py: input normalisation behind the layout transpose, ReLU6 as Clip).
  Issue 17 and the README ("Serving speed") have the measurements.
Each artefact is checked against the JAX model on the same images; the max abs difference is
returned and printed by the CLI. A model with an uncertainty head (issue 14) is exported with a
second output, `log_variance` [B, D], checked the same way; the metadata says so.

`export_detector` does the same for the corner detector (issue 15): detector.jaxexport and
detector.onnx + detector.json beside the embedder's files, uint8 [B, S, S, 3] -> corners
[B, 4, 2] in [0, 1] (the peak soft-argmax inference uses) and the presence logit [B]. An
artefact that does not match the JAX model within DETECTOR_MAX_DIFF is not written.
"""
import contextlib
import io
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from inference.atomic import write_bytes_atomic, write_json_atomic
from inference.model import EXPORT_STEM, load_jax_export, make_embed_fn
from models import uncertainty as uncertainty_lib
from models.embedder import build_model
from models.layers import resolve_conv_impl, resolve_impl


def _embed_fn(model_config, variables, head_config=None, head_variables=None):
  model = build_model(model_config)
  variables = jax.tree.map(jnp.asarray, variables)
  if head_config is None:
    return make_embed_fn(model, variables)
  return uncertainty_lib.make_embed_uncertain_fn(
      model, variables, uncertainty_lib.UncertaintyHead(**head_config),
      jax.tree.map(jnp.asarray, head_variables))


def portable_model_config(model_config):
  """The model config with the native CPU kernels (models/native) swapped for their pure-JAX
  equivalents: an exported program must run where those kernels are not built, and ONNX has no
  such op. Same parameters, same function (tests/test_layers.py)."""
  cfg = ml_collections.ConfigDict(model_config)
  with cfg.unlocked():
    if resolve_impl(cfg.get('depthwise_impl', 'auto')) == 'native':
      cfg.depthwise_impl = 'shifted'
    if resolve_conv_impl(cfg.get('conv_impl', 'auto')) == 'native':
      cfg.conv_impl = 'matmul'
  return cfg


def onnx_model_config(model_config):
  """The model config traced for ONNX: lax convolutions ('xla') for dense and depthwise convs.

  jax2onnx turns each lax conv into one ONNX Conv (depthwise: group=C), which onnxruntime fuses
  with the following BatchNormalization and activation and runs with its own conv kernels. The
  CPU formulations of portable_model_config become hundreds of Slice/Mul/Add (depthwise taps)
  and Concat + MatMul (im2col) nodes that it cannot fuse: 11.3 ms vs 1.7 ms at batch 1 and
  500 vs 154 ms at batch 64 on the demo model (issue 17). Same parameters, same function.
  """
  cfg = ml_collections.ConfigDict(model_config)
  with cfg.unlocked():
    cfg.depthwise_impl = 'xla'
    cfg.conv_impl = 'xla'
  return cfg


def export_jax(fn, image_size, path):
  batch = jax.export.symbolic_shape('b')[0]
  spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.uint8)
  exported = jax.export.export(jax.jit(fn))(spec)
  write_bytes_atomic(path, bytes(exported.serialize()))


def _fresh_gather_folders():
  """jax2onnx 0.13 registers the constant folders of its gather lowering on the first
  conversion's context only (a process-wide flag in plugins/jax/lax/gather.py). jnp indexing
  with a symbolic batch is a gather, which the folders turn into one Slice; in every later
  to_onnx call of the process it became a GatherND, and MobileNetV2's torch padding (Pad, conv,
  slice) then stayed unfolded: the embedder exported after the detector, or any second export,
  got another, slower graph. Clearing the flag registers the folders on each conversion."""
  from jax2onnx.plugins.jax.lax import gather  # pylint: disable=import-outside-toplevel
  if getattr(gather, '_CONST_HANDLERS_REGISTERED', False):
    gather._CONST_HANDLERS_REGISTERED = False  # pylint: disable=protected-access


def export_onnx(fn, image_size, path, output_names=('embeddings',), model_name='embedder'):
  from inference.atomic import write_with_atomic
  # jax2onnx prints debug lines to stdout and logs plugin import noise: keep the CLI's
  # stdout clean (it may be JSON) and its stderr readable.
  for name in ('jax2onnx', 'onnx_ir'):
    logging.getLogger(name).setLevel(logging.ERROR)
  with contextlib.redirect_stdout(io.StringIO()):
    from jax2onnx import to_onnx  # export-time only dependency
    _fresh_gather_folders()
    spec = jax.ShapeDtypeStruct(('B', image_size, image_size, 3), jnp.uint8)
    proto = to_onnx(fn, [spec], model_name=model_name, input_names=['images'],
                    output_names=list(output_names))
  from inference.onnx_graph import optimize_for_onnxruntime  # needs onnx, export-time only
  proto, _ = optimize_for_onnxruntime(proto)
  write_with_atomic(path, lambda tmp: open(tmp, 'wb').write(proto.SerializeToString()))


def export_model(embedding_model, out_dir, formats=('jax', 'onnx'), check_images=None):
  """Writes the artefacts; returns {'jax': {...}, 'onnx': {...}} with paths and parity figures.

  embedding_model: loaded from a checkpoint or variables (inference/model.py), so it carries
  its variables; it also gives the metadata and the reference embeddings for the parity check.
  check_images: uint8 [N, S, S, 3]; random if None.
  """
  if embedding_model.variables is None:
    raise ValueError(f'{embedding_model.source}: export needs a checkpoint, not an artefact')
  size = embedding_model.preprocessing['image_size']
  config, variables = embedding_model.model_config, embedding_model.variables
  head = ((embedding_model.uncertainty_config, embedding_model.uncertainty_variables)
          if embedding_model.has_uncertainty else (None, None))
  fns = {'jax': _embed_fn(portable_model_config(config), variables, *head),
         'onnx': _embed_fn(onnx_model_config(config), variables, *head)}
  if check_images is None:
    check_images = np.random.RandomState(0).randint(0, 256, (4, size, size, 3), np.uint8)
  reference, reference_log_var = embedding_model.embed_with_uncertainty(check_images)
  metadata = embedding_model.metadata()
  if embedding_model.has_uncertainty:
    metadata.update(uncertainty_fingerprint=embedding_model.uncertainty_fingerprint,
                    outputs=['embeddings', 'log_variance'])
  os.makedirs(out_dir, exist_ok=True)
  results = {}
  for fmt in formats:
    ext = {'jax': '.jaxexport', 'onnx': '.onnx'}[fmt]
    path = os.path.join(out_dir, EXPORT_STEM + ext)
    # Metadata first: the loaders below read it, and it is identical for both artefacts.
    write_json_atomic(os.path.join(out_dir, EXPORT_STEM + '.json'), metadata)
    if fmt == 'jax':
      export_jax(fns['jax'], size, path)
      loaded = load_jax_export(path)
    else:
      export_onnx(fns['onnx'], size, path, metadata.get('outputs', ('embeddings',)))
      from inference.onnx_model import load_onnx
      loaded = load_onnx(path)
    got, got_log_var = loaded.embed_with_uncertainty(check_images)
    results[fmt] = {'path': path, 'bytes': os.path.getsize(path),
                    'max_abs_diff': float(np.abs(got - reference).max()),
                    'check_images': int(len(check_images))}
    if reference_log_var is not None:
      results[fmt]['log_variance_max_abs_diff'] = float(np.abs(got_log_var
                                                              - reference_log_var).max())
  return results


# Largest difference an exported detector may make against the JAX model on the check images:
# corners in image fractions (1e-3 is 0.2 px at 192 px; float32 reordering makes ~1e-6, a peak
# that moved to another heatmap cell makes >= 1/24), the presence logit and the heatmap logits
# (inference/corner_peaks.py chooses among their peaks).
DETECTOR_MAX_DIFF = {'corners': 1e-3, 'presence': 1e-3, 'heatmaps': 1e-3}


def detector_check_photos(size, n=4, seed=0):
  """uint8 [n, size, size, 3]: a light page with dark lines, in perspective, on a noisy darker
  desk. The parity check needs clear corners: on random pixels a detector's heatmap peaks can
  nearly tie, and float32 rounding then picks another cell in one runtime than in the other."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  rng = np.random.RandomState(seed)
  photos = []
  for _ in range(n):
    desk = rng.randint(20, 110, (size, size, 3)).astype(np.uint8)
    img = Image.fromarray(desk)
    draw = ImageDraw.Draw(img)
    centre = size * (0.5 + rng.uniform(-0.08, 0.08, 2))
    half = size * rng.uniform(0.2, 0.38, 2)
    quad = centre + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    quad += rng.uniform(-0.06, 0.06, (4, 2)) * size
    draw.polygon([tuple(p) for p in quad], fill=tuple(int(v) for v in rng.randint(200, 256, 3)))
    for t in np.linspace(0.2, 0.8, 6):  # text-like lines across the page
      a, b = quad[0] + t * (quad[3] - quad[0]), quad[1] + t * (quad[2] - quad[1])
      draw.line([tuple(a + 0.15 * (b - a)), tuple(a + 0.8 * (b - a))], fill=(30, 30, 30),
                width=max(1, size // 96))
    photos.append(np.asarray(img, np.uint8))
  return np.stack(photos)


def export_detector(detector_model, out_dir, formats=('jax', 'onnx'), check_images=None,
                    max_diff=None):
  """Writes detector.{jaxexport,onnx} and detector.json into out_dir; returns {'jax': {...},
  'onnx': {...}} with paths and parity figures (max |diff| of corners, presence and heatmap
  logits against the JAX model on check_images, uint8 [N, S, S, 3]; detector_check_photos if None).

  Each artefact is written and checked in a temporary folder inside out_dir and only then
  moved into place (atomic writes): one over max_diff (DETECTOR_MAX_DIFF) raises ValueError
  and leaves out_dir as it was.
  """
  import shutil  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  from inference import detector as detector_lib  # pylint: disable=import-outside-toplevel
  if detector_model.variables is None:
    raise ValueError(f'{detector_model.source}: export needs a checkpoint or release, not an '
                     'export')
  max_diff = dict(DETECTOR_MAX_DIFF, **(max_diff or {}))
  size = detector_model.image_size
  config, variables = detector_model.model_config, detector_model.variables
  fns = {'jax': detector_lib.detect_fn(portable_model_config(config), variables),
         'onnx': detector_lib.detect_fn(onnx_model_config(config), variables)}
  if check_images is None:
    check_images = detector_check_photos(size)
  reference = detector_model.detect_outputs(check_images)
  metadata = detector_model.metadata()
  stem = detector_lib.EXPORT_STEM
  os.makedirs(out_dir, exist_ok=True)
  results = {}
  for fmt in formats:
    ext = {'jax': '.jaxexport', 'onnx': '.onnx'}[fmt]
    tmp_dir = tempfile.mkdtemp(prefix='.detector-export-', dir=out_dir)
    try:
      tmp_path = os.path.join(tmp_dir, stem + ext)
      write_json_atomic(os.path.join(tmp_dir, stem + '.json'), metadata)
      if fmt == 'jax':
        export_jax(fns['jax'], size, tmp_path)
      else:
        export_onnx(fns['onnx'], size, tmp_path, detector_lib.OUTPUTS, model_name='detector')
      got = detector_lib.load_detector(tmp_path, num_threads=1).detect_outputs(check_images)
      diff = {name: float(np.abs(got[name] - reference[name]).max()) for name in reference}
      over = [f'{k} {v:.3g} > {max_diff[k]:g}' for k, v in diff.items() if not v <= max_diff[k]]
      if over:
        raise ValueError(f'{fmt} export of the detector {detector_model.source} differs from the '
                         f'JAX model on {len(check_images)} images ({", ".join(over)}): not '
                         'written')
      path = os.path.join(out_dir, stem + ext)
      # Metadata first, as export_model does: it is identical for both artefacts.
      write_json_atomic(os.path.join(out_dir, stem + '.json'), metadata)
      with open(tmp_path, 'rb') as f:
        write_bytes_atomic(path, f.read())
    finally:
      shutil.rmtree(tmp_dir, ignore_errors=True)
    results[fmt] = {'path': path, 'bytes': os.path.getsize(path),
                    'corners_max_abs_diff': diff['corners'],
                    'presence_max_abs_diff': diff['presence'],
                    'heatmaps_max_abs_diff': diff['heatmaps'],
                    'check_images': int(len(check_images))}
  return results
