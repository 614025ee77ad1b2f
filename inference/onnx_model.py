"""Running an exported ONNX embedder with onnxruntime: numpy + onnxruntime + Pillow, no JAX.

    from inference.onnx_model import load_onnx
    from inference.registry import Registry
    model = load_onnx('export/embedder.onnx'); registry = Registry.load('types.npz', model)
"""
from inference.embedding import EmbeddingModel, read_export_metadata


def load_onnx(path, num_threads=None):
  import onnxruntime as ort  # optional dependency: only this path needs it
  meta = read_export_metadata(path)
  options = ort.SessionOptions()
  if num_threads:
    options.intra_op_num_threads = num_threads
  session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
  input_name = session.get_inputs()[0].name

  def batch_fn(images):
    return session.run(None, {input_name: images})[0]

  return EmbeddingModel(
      batch_fn=batch_fn, preprocessing=meta['preprocessing'], embed_dim=int(meta['embed_dim']),
      fingerprint=meta['fingerprint'], source=path, model_config=meta.get('model_config', {}))
