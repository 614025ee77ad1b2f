"""int8 variant of an exported ONNX embedder or corner detector: onnxruntime static quantization
(issue 17; the detector for issue 15's speed).

    python -m inference.quantize --onnx export/embedder.onnx [--out export/embedder.int8.onnx]
    python -m inference.quantize --onnx export/detector.onnx     # -> export/detector.int8.onnx

Weights int8 per output channel, activations uint8 with ranges calibrated on captures of rendered
documents (input_pipeline/synthetic.py, templates outside the training and held-out id ranges:
this never reads the shared evaluation data); for the detector, rendered phone photos of held-out
paperwork templates (input_pipeline/corner_data.py, the detector's own held-out set). QDQ format:
onnxruntime fuses each DequantizeLinear -> Conv -> QuantizeLinear into an integer conv (VNNI where
the CPU has it).
Quantised: the convs, ReLU6 / ReLU and the residual adds (OP_TYPES); the head (LayerNorm, the two
Gemms, L2 normalisation) stays float32, so the embedding's last steps keep full precision; the
detector's heatmap soft-argmax likewise (quantising every op put its corners off the page on MIDV;
with OP_TYPES they move by about a pixel: README "Finding and flattening the document", int8).
Not written by `export`: the README ("Serving speed") has its speed and accuracy cost, which
differ by backbone (hard-swish has no integer kernel).
The metadata JSON is copied beside the result, so registries of the float32 model accept it
(same fingerprint: the int8 model is an approximation of that model, its accuracy cost is
measured in the README, not hidden by a new identity).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

# Templates from this id on are rendered for calibration only (training uses 0..num_templates,
# held-out evaluation 10_000_000..; input_pipeline/synthetic.py).
CALIBRATION_TEMPLATE_START = 20_000_000
# Quantised ops. Clip (ReLU6) and Add (residuals) with the convs, so that consecutive convs pass
# uint8 from one to the next; leaving them float put a DequantizeLinear/QuantizeLinear pair
# around each (MobileNetV2 160 px, batch 16: 131 ms of Q/DQ beside 88 ms of QLinearConv).
OP_TYPES = ['Conv', 'Clip', 'Relu', 'Add']


def calibration_images(image_size, count=128, seed=17, templates=32, capture_strength=1.0):
  """uint8 [count, S, S, 3]: captures of `templates` rendered document types."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from input_pipeline.synthetic import SyntheticDocuments  # pylint: disable=g-import-not-at-top
  ids = np.arange(CALIBRATION_TEMPLATE_START, CALIBRATION_TEMPLATE_START + templates)
  docs = SyntheticDocuments(ids, seed, template_size=max(192, image_size + image_size // 2),
                            image_size=image_size, capture_strength=capture_strength)
  labels = np.arange(count) % templates
  return np.stack([docs.example_of(tf.constant(l, tf.int32), tf.constant(i, tf.int64)).numpy()
                   for i, l in enumerate(labels)])


class _Reader:
  """onnxruntime's CalibrationDataReader protocol: get_next() -> feed dict or None."""

  def __init__(self, input_name, images, batch_size=16):
    self._batches = iter([{input_name: images[i:i + batch_size]}
                          for i in range(0, len(images), batch_size)])

  def get_next(self):
    return next(self._batches, None)

  def rewind(self):
    raise NotImplementedError


def detector_calibration_images(image_size, count=96):
  """uint8 [count, S, S, 3]: rendered phone photos of held-out paperwork templates (a page on a
  desk, in a hand, tilted, partly out of frame: the corner detector's held-out set)."""
  from configs import corners  # pylint: disable=g-import-not-at-top
  from input_pipeline import corner_data  # pylint: disable=g-import-not-at-top
  config = corners.get_config()
  config.data.image_size = image_size
  config.corners.data.heldout_examples = count
  return corner_data.heldout_set(config)['image']


def quantize_int8(fp32_path, out_path, images):
  """Writes the int8 QDQ model calibrated on `images` (uint8 NHWC) and its metadata JSON."""
  import onnx  # pylint: disable=g-import-not-at-top
  from onnxruntime import quantization as q  # pylint: disable=g-import-not-at-top
  from onnxruntime.quantization.shape_inference import quant_pre_process
  from inference.atomic import write_with_atomic  # pylint: disable=g-import-not-at-top
  input_name = onnx.load(fp32_path).graph.input[0].name
  with tempfile.TemporaryDirectory() as tmp:
    # Shape inference plus onnxruntime's basic optimisations (batch norms folded into the convs),
    # so the quantiser sees Conv -> activation, not Conv -> BatchNormalization -> activation.
    prepared = os.path.join(tmp, 'prepared.onnx')
    quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
    quantized = os.path.join(tmp, 'int8.onnx')
    q.quantize_static(prepared, quantized, _Reader(input_name, images),
                      quant_format=q.QuantFormat.QDQ, op_types_to_quantize=OP_TYPES,
                      per_channel=True, activation_type=q.QuantType.QUInt8,
                      weight_type=q.QuantType.QInt8, calibrate_method=q.CalibrationMethod.MinMax)
    data = open(quantized, 'rb').read()
  write_with_atomic(out_path, lambda tmp: open(tmp, 'wb').write(data))
  meta = os.path.splitext(fp32_path)[0] + '.json'
  shutil.copyfile(meta, os.path.splitext(out_path)[0] + '.json')
  return out_path


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--onnx', required=True,
                 help='float32 embedder.onnx or detector.onnx written by export')
  p.add_argument('--out', help='default: <onnx stem>.int8.onnx beside it')
  p.add_argument('--calibration_images', type=int, default=None,
                 help='default: 128 for an embedder, 96 for a detector')
  args = p.parse_args(argv)
  from inference import detector as detector_lib  # pylint: disable=g-import-not-at-top
  from inference.embedding import read_export_metadata  # pylint: disable=g-import-not-at-top
  from inference.images import InputError  # pylint: disable=g-import-not-at-top
  try:
    if not os.path.isfile(args.onnx):
      raise InputError(f'{args.onnx}: no such file')
    try:  # which model: the kind in its metadata (the readers below report a bad file)
      with open(os.path.splitext(args.onnx)[0] + '.json') as f:
        is_detector = json.load(f).get('kind') == detector_lib.EXPORT_KIND
    except (OSError, ValueError, AttributeError):
      is_detector = False
    if is_detector:
      size = detector_lib.read_export_metadata(args.onnx)['image_size']
    else:
      size = read_export_metadata(args.onnx)['preprocessing']['image_size']
    import onnx  # pylint: disable=g-import-not-at-top
    try:
      onnx.checker.check_model(args.onnx)
    except Exception as e:  # pylint: disable=broad-except  (onnx raises several kinds)
      raise InputError(f'{args.onnx}: not a valid ONNX model ({str(e).splitlines()[0][:200]})')
  except InputError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  out = args.out or os.path.splitext(args.onnx)[0] + '.int8.onnx'
  images = (detector_calibration_images(size, args.calibration_images or 96) if is_detector
            else calibration_images(size, args.calibration_images or 128))
  quantize_int8(args.onnx, out, images)
  print(out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
