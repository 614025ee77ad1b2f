"""The one embedding-model interface every loader returns (JAX checkpoint, jax.export, ONNX).

numpy only: loaders in inference/model.py (JAX) and inference/onnx_model.py (onnxruntime) wrap
their compiled function as `batch_fn`; the registry and CLI see only this class.
"""
import dataclasses
import os

import numpy as np

from errors import CorruptFileError, InputError
import file_io

# Batches are padded up to one of these sizes so a jitted function compiles a handful of times,
# not once per distinct batch size.
BATCH_BUCKETS = (1, 8, 32, 64)


@dataclasses.dataclass
class EmbeddingModel:
  batch_fn: callable     # uint8 [B, S, S, 3] -> float32 [B, D], rows L2-normalised
  preprocessing: dict    # see inference/images.py: default_preprocessing
  embed_dim: int
  fingerprint: str       # hash of parameters + model config + preprocessing
  source: str = ''       # where it was loaded from, for messages
  model_config: dict = dataclasses.field(default_factory=dict)
  variables: object = None  # {'params', 'batch_stats'} when loaded from a checkpoint (export)
  # With an uncertainty head (issue 14, models/uncertainty.py): uint8 [B, S, S, 3] ->
  # (float32 [B, D] rows L2-normalised, float32 [B, D] log sigma^2); None without one.
  uncertain_fn: callable = None
  uncertainty_fingerprint: str = ''  # hash of the head's parameters ('' without one)
  uncertainty_variables: object = None  # the head's {'params', 'batch_stats'} (export)
  uncertainty_config: dict = dataclasses.field(default_factory=dict)

  @property
  def has_uncertainty(self):
    return self.uncertain_fn is not None

  def embed(self, images, batch_size=64, progress=None):
    """uint8 [N, S, S, 3] -> float32 [N, D] L2-normalised rows, in input order."""
    return self._batched(self.batch_fn, images, batch_size, progress)[0]

  def embed_with_uncertainty(self, images, batch_size=64, progress=None):
    """(embeddings [N, D], log sigma^2 [N, D]); the second is None without an uncertainty head."""
    if not self.has_uncertainty:
      return self.embed(images, batch_size, progress), None
    return self._batched(self.uncertain_fn, images, batch_size, progress)

  def _batched(self, fn, images, batch_size, progress):
    images = np.asarray(images)
    size = self.preprocessing['image_size']
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
      raise ValueError(f'expected images [N, {size}, {size}, 3], got {list(images.shape)}')
    if images.dtype != np.uint8:
      images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    outs = None
    starts = range(0, len(images), batch_size)
    for start in (progress(starts) if progress else starts):
      chunk = images[start:start + batch_size]
      n = len(chunk)
      padded_n = next((b for b in BATCH_BUCKETS if b >= n), n)
      if padded_n > n:
        chunk = np.concatenate([chunk, np.zeros((padded_n - n,) + chunk.shape[1:], np.uint8)])
      result = fn(chunk)
      result = result if isinstance(result, (tuple, list)) else (result,)
      if outs is None:
        outs = [np.zeros((len(images), self.embed_dim), np.float32) for _ in result]
      for out, r in zip(outs, result):
        out[start:start + n] = np.asarray(r)[:n]
    if outs is None:
      outs = [np.zeros((0, self.embed_dim), np.float32)] * (2 if fn is self.uncertain_fn else 1)
    return tuple(outs)

  @classmethod
  def from_exported(cls, fn, meta, source):
    """An EmbeddingModel around an exported function (jax.export or onnxruntime): with
    meta['outputs'] == ['embeddings', 'log_variance'] it has the uncertainty head too."""
    two = meta.get('outputs') == ['embeddings', 'log_variance']
    return cls(batch_fn=(lambda x: fn(x)[0]) if two else fn,
               preprocessing=meta['preprocessing'], embed_dim=int(meta['embed_dim']),
               fingerprint=meta['fingerprint'], source=source,
               model_config=meta.get('model_config', {}),
               uncertain_fn=(lambda x: tuple(fn(x)[:2])) if two else None,
               uncertainty_fingerprint=meta.get('uncertainty_fingerprint', '') if two else '')

  def metadata(self):
    return {'fingerprint': self.fingerprint, 'embed_dim': self.embed_dim,
            'preprocessing': self.preprocessing, 'model_config': self.model_config}



def read_export_metadata(artefact_path):
  """export_dir/embedder.json, written beside each artefact by inference/export.py."""
  meta_path = os.path.splitext(artefact_path)[0] + '.json'
  if not os.path.isfile(meta_path):
    raise InputError(f'{artefact_path}: missing metadata file {meta_path}')
  meta = file_io.read_json(meta_path, 'export metadata')
  missing = [k for k in ('fingerprint', 'embed_dim', 'preprocessing') if k not in meta]
  if missing:
    raise CorruptFileError(f'{meta_path}: export metadata lacks {", ".join(missing)}')
  return meta
