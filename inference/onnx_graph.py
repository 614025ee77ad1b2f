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

`conv_padding_from_pad_slice` folds MobileNetV2's torch-style padding (models/mobilenet_v2.py:
Pad(1) -> Conv('SAME') -> Slice off the extra output row/column, at each stride-2 depthwise conv)
into the Conv's own pads: without it the Slice sat between the conv and its batch norm, which then
stayed unfused and out of NCHWc (MobileNetV2 224 px, batch 16, one core: 360 -> 302 ms median of 9
interleaved rounds).

`optimize_for_onnxruntime` runs all three and drops jax2onnx's recorded intermediate shapes, some of
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


def _attr(node, name, default=None):
  return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _fold_one_pad_slice(slice_node, producer, readers, constants, shapes):
  """Pad(NHWC) -> Transpose -> Conv -> Transpose -> Slice as one Transpose -> Conv -> Transpose
  with the Conv's pads widened at the start and cut at the end; None if the pattern or its
  conditions (zero constant padding of H and W only, slice from 0, no dilation) do not hold."""
  def single(name, op, perm=None):
    node = producer.get(name)
    ok = node is not None and node.op_type == op and len(readers.get(name, [])) == 1
    return node if ok and (perm is None or _perm(node) == perm) else None
  to_nhwc = single(slice_node.input[0], 'Transpose', [0, 2, 3, 1])
  conv = to_nhwc and single(to_nhwc.input[0], 'Conv')
  to_nchw = conv and single(conv.input[0], 'Transpose', NHWC_TO_NCHW)
  pad = to_nchw and single(to_nchw.input[0], 'Pad')
  if pad is None or _attr(pad, 'mode', b'constant') not in (b'constant', 'constant'):
    return None
  pads = constants.get(pad.input[1])
  fill = constants.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(())
  starts, ends = (constants.get(n) for n in slice_node.input[1:3])
  axes = constants.get(slice_node.input[3]) if len(slice_node.input) > 3 else None
  in_shape = shapes.get(pad.input[0])
  kernel_shape = shapes.get(conv.input[1])
  if any(v is None for v in (pads, fill, starts, ends, axes, in_shape, kernel_shape)):
    return None
  if (len(pads) != 8 or pads[[0, 3, 4, 7]].any() or fill.size != 1 or float(fill.reshape(())) != 0
      or starts.any() or (ends < 0).any() or len(slice_node.input) > 4
      or set(axes.tolist()) - {1, 2} or any(d != 1 for d in _attr(conv, 'dilations', [1, 1]))
      or _attr(conv, 'auto_pad', b'NOTSET') not in (b'NOTSET', 'NOTSET')):
    return None
  conv_pads = list(_attr(conv, 'pads', [0, 0, 0, 0]))
  strides = list(_attr(conv, 'strides', [1, 1]))
  new_pads = list(conv_pads)
  for spatial in (0, 1):  # H, W
    size, k, stride = in_shape[1 + spatial], kernel_shape[2 + spatial], strides[spatial]
    begin = conv_pads[spatial] + int(pads[1 + spatial])
    end = conv_pads[2 + spatial] + int(pads[5 + spatial])
    if not all(isinstance(v, int) for v in (size, k)):
      return None
    full = (size + begin + end - k) // stride + 1
    keep = full
    if 1 + spatial in axes.tolist():
      keep = min(full, int(ends[axes.tolist().index(1 + spatial)]))
    # The last kept output reads input rows up to (keep - 1) * stride + k - 1 (padded coordinates):
    # padding beyond that only fed the outputs the Slice dropped.
    new_end = max(0, (keep - 1) * stride + k - size - begin)
    if new_end > end or (size + begin + new_end - k) // stride + 1 != keep:
      return None
    new_pads[spatial], new_pads[2 + spatial] = begin, new_end
  return pad, to_nchw, conv, to_nhwc, new_pads


def conv_padding_from_pad_slice(model):
  """Returns (model, number of Pad/Slice pairs folded into conv padding)."""
  graph = model.graph
  inferred = onnx.shape_inference.infer_shapes(model)
  shapes = {}
  for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
    dims = vi.type.tensor_type.shape.dim
    shapes[vi.name] = [d.dim_value if d.HasField('dim_value') else None for d in dims]
  constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
  for name, array in constants.items():
    shapes.setdefault(name, list(array.shape))
  producer = {out: node for node in graph.node for out in node.output}
  readers = {}
  for node in graph.node:
    for name in node.input:
      readers.setdefault(name, []).append(node)
  drop, folded = set(), 0
  for node in list(graph.node):
    if node.op_type != 'Slice':
      continue
    found = _fold_one_pad_slice(node, producer, readers, constants, shapes)
    if found is None:
      continue
    pad, to_nchw, conv, to_nhwc, new_pads = found
    attrs = [a for a in conv.attribute if a.name != 'pads']
    del conv.attribute[:]
    conv.attribute.extend(attrs + [helper.make_attribute('pads', new_pads)])
    to_nchw.input[0] = pad.input[0]
    to_nhwc.output[0] = node.output[0]
    drop.update((id(pad), id(node)))
    folded += 1
  nodes = [n for n in graph.node if id(n) not in drop]
  del graph.node[:]
  graph.node.extend(nodes)
  _drop_unused_initializers(graph)
  return model, folded


def optimize_for_onnxruntime(model):
  """All rewrites above; returns (model, {rewrite: count})."""
  del model.graph.value_info[:]
  model, folded = fold_input_normalization(model)
  model, clips = clip_from_max_min(model)
  model, pads = conv_padding_from_pad_slice(model)
  del model.graph.value_info[:]  # shape inference's, for the graph before the rewrite
  onnx.checker.check_model(model)
  return model, {'input_normalization_folded': int(folded), 'relu6_to_clip': clips,
                 'pad_slice_to_conv_pads': pads}
