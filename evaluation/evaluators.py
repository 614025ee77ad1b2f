"""Periodic evaluation during training: embed each eval set, report open-set figures.

Eval sets come from config.eval_sets: 'synthetic_heldout' / 'paperwork_heldout' (templates never
trained on) or 'folder:<dir>' (a labels.csv folder of real captures such as
../shared/data/us_forms: TensorBoard then shows real-document figures beside the synthetic ones).
"""
import os

import jax
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np
from absl import logging

import file_io
from evaluation import labelled_folder
from evaluation import verification


def build_eval_sets(config):
  """[(name, images uint8 [N, S, S, 3], labels [N], is_register [N])], built once."""
  # Imported here: the renderers bring TensorFlow, which embedding alone does not need.
  from input_pipeline import rendered  # pylint: disable=import-outside-toplevel
  from input_pipeline import synthetic  # pylint: disable=import-outside-toplevel
  sets = []
  for name in config.eval_sets:
    if name == 'synthetic_heldout':
      images, labels, is_register = synthetic.heldout_set(config.data.synthetic,
                                                          config.data.image_size)
      sets.append((name, images, labels, is_register))
    elif name == 'paperwork_heldout':
      images, labels, is_register = rendered.heldout_set(config.data.paperwork,
                                                         config.data.image_size)
      sets.append((name, images, labels, is_register))
    else:
      root = name.split(':', 1)[1]
      if config.get('eval_missing_folders', 'error') == 'skip' and not file_io.isdir(root):
        logging.warning('eval set %s: no such folder, left out (eval_missing_folders=skip)', root)
        continue
      images, labels, is_register, skipped = labelled_folder.load_labelled_folder(
          root, config.data.image_size)
      for file, why in skipped:
        logging.warning('eval set %s: skipped %s (%s)', root, file, why)
      # TensorBoard tag: the folder's name (eval/us_forms/tpr@fpr=1e-04), not its whole path.
      tag = os.path.basename(os.path.normpath(root)) or name.replace('/', '_').replace(':', '_')
      sets.append((tag, images, labels, is_register))
  return sets


def make_embed_fn(model, mesh, batch_sharding):
  """(variables, images uint8 numpy [N, ...], batch_size) -> float32 numpy [N, D].

  Every process holds the whole eval set (built the same way on each host) and embeds its share
  of each batch: the batch becomes a global array from the rows of this process's devices
  (jax.make_array_from_callback; a host-local numpy array with a non-replicated sharding is
  refused when there are several processes), and the embeddings come back replicated, so each
  process reads all of them from its own device."""
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False),
                  in_shardings=(None, batch_sharding),
                  out_shardings=NamedSharding(mesh, PartitionSpec()))

  def embed(variables, images, batch_size):
    out = []
    for i in range(0, len(images), batch_size):
      chunk = images[i:i + batch_size]
      n = len(chunk)
      if n < batch_size:  # pad to a fixed shape: one compilation
        chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
      x = jax.make_array_from_callback(chunk.shape, batch_sharding, lambda idx, c=chunk: c[idx])
      out.append(np.asarray(apply(variables, x).addressable_data(0))[:n])
    return np.concatenate(out)

  return embed


def evaluate_embeddings(embeddings, labels, is_register):
  figures = verification.pair_metrics(embeddings, labels)
  figures = {k: float(v) for k, v in figures.items() if not k.startswith(('resolvable', 'threshold'))}
  figures['top1'] = verification.top1_identification(embeddings, labels, is_register)
  return figures


def run(eval_sets, embed_fn, variables, batch_size):
  """Yields (set name, {figure: value})."""
  for name, images, labels, is_register in eval_sets:
    embeddings = embed_fn(variables, images, batch_size)
    yield name, evaluate_embeddings(embeddings, labels, is_register)
