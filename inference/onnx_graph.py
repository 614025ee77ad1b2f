"""Rewrites of the jax2onnx graph that onnxruntime does not do itself (issue 17).

jax2onnx keeps the model's NHWC layout and wraps every Conv in Transpose(NHWC -> NCHW) ...
Transpose(NCHW -> NHWC); onnxruntime's optimizer (ORT_ENABLE_ALL) cancels those pairs, folds the
batch norms into the convs, fuses hard-swish / ReLU6 into them and runs them in its blocked NCHWc
layout. What it cannot move is the first Transpose: it sits after the input normalisation
(uint8 -> float, /255, -mean, /std), which therefore runs in NHWC with per-channel constants of
shape [1, 1, 1, 3]; onnxruntime broadcasts those over spans of 3 floats, and on 64 x 128 x 128 x 3
pixels they took 74 of the batch's 178 ms (profile in issue 17).

`fold_input_normalization` moves that Transpose to the graph input (on uint8: a quarter of the
bytes) and composes the normalisation into one per-channel affine map, run as
DequantizeLinear(x, scale, zero_point=0, axis=1) (the cast and the multiply in one pass) + Add
of a [1, C, 1, 1] bias: 8.4 ms for that batch against 17.3 ms for the same four ops in NCHW and
10.9 ms for Cast + Mul + Add (one process, interleaved, 15 rounds). Same function up to float32
rounding (a*x + b instead of (x / 255 - m) / s: < 1e-6 on normalised pixels).

`clip_from_max_min` turns ReLU6, which jax2onnx writes as Max(x, 0) -> Min(., 6), into one Clip:
onnxruntime fuses Clip into the conv before it, but not Max/Min, and each unfused op forced the
activations out of the NCHWc layout and back (MobileNetV2 at 160 px, batch 16: 101 ms of Max/Min
and 106 ms of reorders beside 112 ms of convs).

`optimize_for_onnxruntime` runs both and drops jax2onnx's recorded intermediate shapes, some of
which are NHWC shapes on NCHW tensors (onnxruntime warns and re-infers them).
"""
import numpy as np
import onnx
from onnx import helper, numpy_helper

NHWC_TO_NCHW = [0, 3, 1, 2]


def _perm(node):
  return next((list(a.ints) for a in node.attribute if a.name == 'perm'), None)


def _channel_vector(array, channels):
  """A constant broadcast against NHWC data as a [C] vector, or None if it is neither a scalar
  nor per-channel ([C], [1, C], [1, 1, C], [1, 1, 1, C])."""
  if array.size == 1:
    return np.full(channels, array.reshape(()), np.float64)
  if array.size == channels and array.shape[-1] == channels and array.ndim <= 4:
    return array.reshape(channels).astype(np.float64)
  return None


def _normalization_chain(graph):
  """(cast, affine nodes, transpose, scale, bias) when the graph starts uint8 input -> Cast to
  float -> Add/Sub/Mul/Div by constants -> Transpose(NHWC -> NCHW), each output read once;
  else None. scale and bias compose the chain: chain(x) = x * scale + bias, per channel."""
  readers = {}
  for node in graph.node:
    for name in node.input:
      readers.setdefault(name, []).append(node)
  constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
  image = graph.input[0]
  tensor_type = image.type.tensor_type
  if tensor_type.elem_type != onnx.TensorProto.UINT8 or len(tensor_type.shape.dim) != 4:
    return None
  channels = tensor_type.shape.dim[3].dim_value
  scale, bias = np.ones(channels), np.zeros(channels)
  nodes, current = [], image.name
  while True:
    next_nodes = readers.get(current, [])
    if len(next_nodes) != 1:
      return None
    node = next_nodes[0]
    if not nodes:  # the first op must be the cast to float
      to = next((a.i for a in node.attribute if a.name == 'to'), None)
      if node.op_type != 'Cast' or to != onnx.TensorProto.FLOAT:
        return None
    elif node.op_type == 'Transpose' and _perm(node) == NHWC_TO_NCHW:
      return nodes[0], nodes[1:], node, scale, bias
    elif node.op_type in ('Add', 'Sub', 'Mul', 'Div') and node.input[0] == current:
      c = _channel_vector(constants.get(node.input[1], np.array([])), channels)
      if c is None:
        return None
      if node.op_type == 'Add':
        bias = bias + c
      elif node.op_type == 'Sub':
        bias = bias - c
      elif node.op_type == 'Mul':
        scale, bias = scale * c, bias * c
      else:
        scale, bias = scale / c, bias / c
    else:
      return None
    nodes.append(node)
    current = node.output[0]


def fold_input_normalization(model):
  """Returns (model, folded). folded=False leaves the model untouched: its graph does not start
  with the pattern above (nothing to gain there, nothing to break)."""
  graph = model.graph
  found = _normalization_chain(graph)
  if found is None:
    return model, False
  cast, affine, transpose, scale, bias = found
  image = graph.input[0].name
  prefix = 'input_norm_'
  graph.initializer.extend([
      numpy_helper.from_array(scale.astype(np.float32), prefix + 'scale'),
      numpy_helper.from_array(np.zeros(len(scale), np.uint8), prefix + 'zero_point'),
      numpy_helper.from_array(bias.astype(np.float32).reshape(1, -1, 1, 1), prefix + 'bias')])
  new_nodes = [
      helper.make_node('Transpose', [image], [prefix + 'nchw'], perm=NHWC_TO_NCHW,
                       name=prefix + 'transpose'),
      helper.make_node('DequantizeLinear',
                       [prefix + 'nchw', prefix + 'scale', prefix + 'zero_point'],
                       [prefix + 'scaled'], axis=1, name=prefix + 'scale'),
      helper.make_node('Add', [prefix + 'scaled', prefix + 'bias'], [transpose.output[0]],
                       name=prefix + 'bias')]
  dropped = [cast, *affine, transpose]
  dropped_outputs = {n.output[0] for n in dropped}
  nodes = new_nodes + [n for n in graph.node if all(n is not d for d in dropped)]
  del graph.node[:]
  graph.node.extend(nodes)
  # Shapes recorded for the dropped NHWC intermediates no longer exist.
  info = [vi for vi in graph.value_info if vi.name not in dropped_outputs]
  del graph.value_info[:]
  graph.value_info.extend(info)
  _drop_unused_initializers(graph)
  onnx.checker.check_model(model)
  return model, True


def _scalar(constants, name):
  value = constants.get(name)
  return None if value is None or value.size != 1 else float(value.reshape(()))


def clip_from_max_min(model):
  """Max(x, lo) read only by Min(., hi), lo and hi scalar constants -> Clip(x, lo, hi).
  Returns (model, number of pairs replaced)."""
  graph = model.graph
  constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
  readers = {}
  for node in graph.node:
    for name in node.input:
      readers.setdefault(name, []).append(node)
  graph_outputs = {o.name for o in graph.output}
  replace, drop = {}, set()
  for node in graph.node:
    if node.op_type != 'Max' or len(node.input) != 2 or node.output[0] in graph_outputs:
      continue
    lo_index = next((i for i in (1, 0) if _scalar(constants, node.input[i]) is not None), None)
    after = readers.get(node.output[0], [])
    if lo_index is None or len(after) != 1 or after[0].op_type != 'Min' or len(after[0].input) != 2:
      continue
    minimum = after[0]
    hi_index = 1 if minimum.input[0] == node.output[0] else 0
    hi = _scalar(constants, minimum.input[hi_index])
    if hi is None or minimum.input[1 - hi_index] != node.output[0]:
      continue
    lo = _scalar(constants, node.input[lo_index])
    names = (f'{minimum.output[0]}_clip_lo', f'{minimum.output[0]}_clip_hi')
    graph.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), n)
                              for v, n in zip((lo, hi), names)])
    replace[id(node)] = helper.make_node('Clip', [node.input[1 - lo_index], *names],
                                         [minimum.output[0]], name=minimum.output[0] + '_clip')
    drop.add(id(minimum))
  nodes = [replace.get(id(n), n) for n in graph.node if id(n) not in drop]
  del graph.node[:]
  graph.node.extend(nodes)
  _drop_unused_initializers(graph)
  return model, len(replace)


def _drop_unused_initializers(graph):
  used = {name for node in graph.node for name in node.input}
  kept = [init for init in graph.initializer if init.name in used]
  del graph.initializer[:]
  graph.initializer.extend(kept)


def optimize_for_onnxruntime(model):
  """All rewrites above; returns (model, {rewrite: count})."""
  del model.graph.value_info[:]
  model, folded = fold_input_normalization(model)
  model, clips = clip_from_max_min(model)
  onnx.checker.check_model(model)
  return model, {'input_normalization_folded': int(folded), 'relu6_to_clip': clips}
