"""Running an exported ONNX embedder with onnxruntime: numpy + onnxruntime + Pillow, no JAX.

    from inference.onnx_model import load_onnx
    from inference.registry import Registry
    model = load_onnx('export/embedder.onnx'); registry = Registry.load('types.npz', model)

The same loader runs the int8 variant (embedder.int8.onnx, inference/quantize.py).
"""
from inference.embedding import EmbeddingModel, read_export_metadata


def session_options(num_threads=None):
  """onnxruntime's full graph optimisation (ORT_ENABLE_ALL: batch norms folded into the convs,
  activations fused, the blocked NCHWc conv layout) and, when num_threads is given, exactly that
  many threads for the ops and no second pool between them (one model, run op after op)."""
  import onnxruntime as ort  # optional dependency: only this path needs it
  options = ort.SessionOptions()
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
  options.inter_op_num_threads = 1
  if num_threads:
    options.intra_op_num_threads = num_threads
  return options


def load_onnx(path, num_threads=None):
  import onnxruntime as ort  # optional dependency: only this path needs it
  meta = read_export_metadata(path)
  session = ort.InferenceSession(path, session_options(num_threads),
                                 providers=['CPUExecutionProvider'])
  input_name = session.get_inputs()[0].name

  def run(images):  # every output: embeddings, and log_variance with an uncertainty head
    return session.run(None, {input_name: images})

  if meta.get('outputs') == ['embeddings', 'log_variance']:
    return EmbeddingModel.from_exported(run, meta, path)
  return EmbeddingModel.from_exported(lambda images: run(images)[0], meta, path)
