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

  def embed(self, images, batch_size=64, progress=None):
    """uint8 [N, S, S, 3] -> float32 [N, D] L2-normalised rows, in input order."""
    images = np.asarray(images)
    size = self.preprocessing['image_size']
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
      raise ValueError(f'expected images [N, {size}, {size}, 3], got {list(images.shape)}')
    if images.dtype != np.uint8:
      images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    out = np.zeros((len(images), self.embed_dim), np.float32)
    starts = range(0, len(images), batch_size)
    for start in (progress(starts) if progress else starts):
      chunk = images[start:start + batch_size]
      n = len(chunk)
      padded_n = next((b for b in BATCH_BUCKETS if b >= n), n)
      if padded_n > n:
        chunk = np.concatenate([chunk, np.zeros((padded_n - n,) + chunk.shape[1:], np.uint8)])
      out[start:start + n] = np.asarray(self.batch_fn(chunk))[:n]
    return out

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
