"""The ONNX export's fast form (issue 17): what the graph looks like, that it computes the JAX
model's function, and the int8 variant.

Batch statistics are set to random values first: at initialisation (mean 0, variance 1, scale 1,
bias 0) a wrongly folded batch norm would still match.
"""
import collections
import os

import jax
import numpy as np
import onnx
import pytest

from conftest import random_stats
from configs import default
from inference import quantize
from inference.export import export_model
from inference.model import from_variables
from inference.onnx_graph import conv_padding_from_pad_slice, fold_input_normalization
from inference.onnx_model import load_onnx
from models.embedder import build_model

SIZE = 32


def random_stats_model(backbone, width):
  config = default.get_config()
  config.model.backbone = backbone
  config.model.width = width
  config.model.embed_dim = 32
  config.model.squeeze_channels = 8
  variables = build_model(config.model).init(
      jax.random.PRNGKey(0), np.zeros((1, SIZE, SIZE, 3), np.uint8), train=False)
  variables = random_stats(variables)
  return from_variables(config.model, variables, SIZE, source=f'{backbone}-{width} random')


def images(n, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (n, SIZE, SIZE, 3), np.uint8)


@pytest.fixture(scope='module', params=[('lcnet', 0.25), ('mobilenet_v2', 0.35)],
                ids=['lcnet', 'mobilenet_v2'])
def exported(request, tmp_path_factory):
  model = random_stats_model(*request.param)
  out = str(tmp_path_factory.mktemp('export'))
  result = export_model(model, out, formats=('onnx',), check_images=images(8))
  return model, result['onnx']


def test_graph_is_one_conv_per_conv_and_normalises_in_nchw(exported):
  model, result = exported
  graph = onnx.load(result['path']).graph
  ops = collections.Counter(n.op_type for n in graph.node)
  # The CPU formulations (depthwise taps as slices, im2col as concat + matmul) are gone, and
  # MobileNetV2's torch padding (Pad, conv, Slice) is the conv's own padding.
  assert ops['Slice'] == 0 and ops['Pad'] == 0, ops
  assert ops['Einsum'] == 0 and ops['MatMul'] == 0, ops
  # ReLU6 is one Clip (fusable into the conv), not Max -> Min.
  assert ops['Max'] <= 1 and ops['Min'] == 0, ops
  params = model.variables['params']
  n_convs = sum(1 for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
                if jax.tree_util.keystr(path).endswith("['kernel']") and leaf.ndim == 4)
  assert ops['Conv'] == n_convs
  kernels = {i.name: i for i in graph.initializer}
  depthwise = [n for n in graph.node if n.op_type == 'Conv'
               and any(a.name == 'group' and a.i > 1 for a in n.attribute)]
  assert depthwise, 'depthwise convs should be grouped Convs'
  # Input: uint8 NHWC -> Transpose -> DequantizeLinear (cast and scale) -> Add, then the convs.
  first = graph.node[:3]
  assert [n.op_type for n in first] == ['Transpose', 'DequantizeLinear', 'Add']
  assert first[0].input[0] == graph.input[0].name
  assert onnx.numpy_helper.to_array(kernels[first[2].input[1]]).shape == (1, 3, 1, 1)


def test_onnx_matches_jax(exported):
  model, result = exported
  assert result['max_abs_diff'] < 1e-4
  x = images(16, seed=3)
  got = load_onnx(result['path'], num_threads=1).embed(x)
  assert np.abs(got - model.embed(x)).max() < 1e-4


def test_fold_leaves_graphs_without_the_pattern_alone():
  h = onnx.helper
  x = h.make_tensor_value_info('x', onnx.TensorProto.FLOAT, ['B', 4, 4, 3])
  y = h.make_tensor_value_info('y', onnx.TensorProto.FLOAT, None)
  graph = h.make_graph([h.make_node('Transpose', ['x'], ['y'], perm=[0, 3, 1, 2])], 'g', [x], [y])
  model = h.make_model(graph)
  before = model.SerializeToString()
  model, folded = fold_input_normalization(model)
  assert not folded and model.SerializeToString() == before


def test_int8_variant_loads_and_approximates(exported, tmp_path):
  model, result = exported
  out = str(tmp_path / 'embedder.int8.onnx')
  quantize.quantize_int8(result['path'], out, quantize.calibration_images(SIZE, 16, templates=4))
  int8 = load_onnx(out, num_threads=1)
  assert int8.fingerprint == model.fingerprint  # registries of the float model accept it
  ops = collections.Counter(n.op_type for n in onnx.load(out).graph.node)
  assert ops['QuantizeLinear'] > 0
  x = images(8, seed=5)
  cosine = (int8.embed(x) * model.embed(x)).sum(1)
  assert cosine.min() > 0.8, cosine


def test_quantize_cli_bad_input_is_one_line(tmp_path, capsys):
  (tmp_path / 'junk.onnx').write_bytes(b'not a model')
  (tmp_path / 'junk.json').write_text(
      '{"fingerprint": "x", "embed_dim": 8, "preprocessing": {"image_size": 32}}')
  (tmp_path / 'bare.onnx').write_bytes(b'')
  for name, why in (('missing.onnx', 'no such file'), ('junk.onnx', 'not a valid ONNX model'),
                    ('bare.onnx', 'missing metadata')):
    code = quantize.main(['--onnx', str(tmp_path / name)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith('error: ') and err.count('\n') == 1, err
    assert why in err, err


def pad_conv_slice_graph(fill):
  """x NHWC [1, 6, 6, 2] -> Pad(1 on H and W, value `fill`) -> conv 3x3 stride 2 'SAME' -> Slice
  to 3 x 3: MobileNetV2's torch padding as jax2onnx writes it."""
  h, nh = onnx.helper, onnx.numpy_helper
  rng = np.random.RandomState(0)
  inits = [nh.from_array(np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64), 'pads'),
           nh.from_array(np.array(fill, np.float32), 'fill'),
           nh.from_array(rng.normal(size=(2, 1, 3, 3)).astype(np.float32), 'w'),
           nh.from_array(np.array([0, 0], np.int64), 'starts'),
           nh.from_array(np.array([3, 3], np.int64), 'ends'),
           nh.from_array(np.array([1, 2], np.int64), 'axes')]
  nodes = [h.make_node('Pad', ['x', 'pads', 'fill'], ['p'], mode='constant'),
           h.make_node('Transpose', ['p'], ['p_nchw'], perm=[0, 3, 1, 2]),
           h.make_node('Conv', ['p_nchw', 'w'], ['c'], strides=[2, 2], pads=[0, 0, 1, 1], group=2),
           h.make_node('Transpose', ['c'], ['c_nhwc'], perm=[0, 2, 3, 1]),
           h.make_node('Slice', ['c_nhwc', 'starts', 'ends', 'axes'], ['y'])]
  graph = h.make_graph(nodes, 'g', [h.make_tensor_value_info('x', onnx.TensorProto.FLOAT,
                                                             [1, 6, 6, 2])],
                       [h.make_tensor_value_info('y', onnx.TensorProto.FLOAT, None)], inits)
  return h.make_model(graph, opset_imports=[h.make_opsetid('', 18)])


def test_pad_slice_fold_same_output_and_only_for_zero_padding():
  import onnxruntime as ort
  x = np.random.RandomState(1).normal(size=(1, 6, 6, 2)).astype(np.float32)
  for fill, expect in ((0.0, 1), (1.0, 0)):
    model = pad_conv_slice_graph(fill)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {'x': x})[0]
    model, folded = conv_padding_from_pad_slice(model)
    assert folded == expect
    got = ort.InferenceSession(model.SerializeToString()).run(None, {'x': x})[0]
    np.testing.assert_allclose(got, want, atol=1e-6)
    ops = [n.op_type for n in model.graph.node]
    assert ('Pad' in ops) == (not folded) and ('Slice' in ops) == (not folded)


def test_a_second_export_in_the_process_gets_the_same_graph(tmp_path):
  """jax2onnx registered its gather folders on the first conversion only: a later export turned
  each static slice into a GatherND (inference/export.py _fresh_gather_folders)."""
  import jax.numpy as jnp
  from inference.export import export_onnx
  counts = []
  for n in range(2):
    path = str(tmp_path / f'{n}.onnx')
    export_onnx(lambda x: (x[:, :5, 1:6].astype(jnp.float32),), 8, path, ('y',))
    ops = collections.Counter(node.op_type for node in onnx.load(path).graph.node)
    counts.append((ops['Slice'], ops['GatherND']))
  assert counts == [(1, 0), (1, 0)], counts
