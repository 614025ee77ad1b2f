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


def export_onnx(fn, image_size, path, output_names=('embeddings',)):
  from inference.atomic import write_with_atomic
  # jax2onnx prints debug lines to stdout and logs plugin import noise: keep the CLI's
  # stdout clean (it may be JSON) and its stderr readable.
  for name in ('jax2onnx', 'onnx_ir'):
    logging.getLogger(name).setLevel(logging.ERROR)
  with contextlib.redirect_stdout(io.StringIO()):
    from jax2onnx import to_onnx  # export-time only dependency
    spec = jax.ShapeDtypeStruct(('B', image_size, image_size, 3), jnp.uint8)
    proto = to_onnx(fn, [spec], model_name='embedder', input_names=['images'],
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
