"""Serving latency and throughput: jitted JAX vs the exported ONNX model, float32 and int8.

  python benchmarks/classify_latency.py                          # random-init demo model
  python benchmarks/classify_latency.py --checkpoint=/tmp/demo   # a trained workdir
  python benchmarks/classify_latency.py --backbone=mobilenet_v2 --width=1.0 --image_size=160

The model is exported as `inference.cli export` does (inference/export.py), the int8 variant
made as `python -m inference.quantize` does (calibrated on rendered documents); all three run in
this one process. Cases, each timed round-robin over `--rounds` (benchmarks/timing.py), one JSON
line per runtime:
- model_only/batch=1 and batch=N: uint8 pixels -> normalised embeddings.
- end_to_end/batch=1: PNG file on disk -> decode + resize -> embed -> search a registry of
  `--registry_size` entries -> answer. The target is < 10 ms on one core for this case.
Then one 'parity' line: max |ONNX - JAX| over the batch, per ONNX variant.
Pinned to `--threads` cores; XLA and onnxruntime get the same number of threads.
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--checkpoint', help='training workdir; default: random-init demo model')
  p.add_argument('--config', default='configs/arcface_clip.py:demo')
  p.add_argument('--threads', type=int, default=1)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--registry_size', type=int, default=1000)
  p.add_argument('--rounds', type=int, default=9)
  p.add_argument('--backbone', help='override config.model.backbone (random init)')
  p.add_argument('--width', type=float, help='override config.model.width')
  p.add_argument('--image_size', type=int, help='override config.data.image_size')
  p.add_argument('--no_int8', action='store_true', help='skip the int8 variant')
  p.add_argument('--calibration_images', type=int, default=128)
  return p.parse_args()


def demo_model(config_arg, backbone=None, width=None, image_size=None):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  from inference.model import from_variables  # pylint: disable=g-import-not-at-top
  from models.embedder import build_model  # pylint: disable=g-import-not-at-top
  path, _, arg = config_arg.partition(':')
  spec = importlib.util.spec_from_file_location('cfg', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  for field, value in (('backbone', backbone), ('width', width)):
    if value is not None:
      config.model[field] = value
  size = image_size or config.data.image_size
  variables = build_model(config.model).init(
      jax.random.PRNGKey(0), np.zeros((1, size, size, 3), np.uint8), train=False)
  name = f'{config_arg} random init: {config.model.backbone}-{config.model.width} {size} px'
  return from_variables(config.model, variables, size, source=name)


def main():
  args = parse_args()
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_cpu_multi_thread_eigen={"true" if args.threads > 1 else "false"}'
                             f' intra_op_parallelism_threads={args.threads}')
  for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
    os.environ[var] = str(args.threads)
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.threads]))
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from benchmarks import timing  # pylint: disable=g-import-not-at-top
  from inference.export import export_model  # pylint: disable=g-import-not-at-top
  from inference.images import load_image  # pylint: disable=g-import-not-at-top
  from inference.model import load_checkpoint  # pylint: disable=g-import-not-at-top
  from inference.onnx_model import load_onnx  # pylint: disable=g-import-not-at-top
  from inference import quantize  # pylint: disable=g-import-not-at-top
  from inference.registry import Registry  # pylint: disable=g-import-not-at-top
  from inference.search import l2_normalize  # pylint: disable=g-import-not-at-top

  if args.checkpoint:
    jax_model = load_checkpoint(args.checkpoint)
  else:
    jax_model = demo_model(args.config, args.backbone, args.width, args.image_size)
  size = jax_model.preprocessing['image_size']
  tmp = tempfile.mkdtemp(prefix='classify_latency_')
  export = export_model(jax_model, tmp, formats=('onnx',))
  models = {'jax': jax_model,
            'onnx_fp32': load_onnx(export['onnx']['path'], num_threads=args.threads)}
  if not args.no_int8:
    int8_path = os.path.join(tmp, 'embedder.int8.onnx')
    quantize.quantize_int8(export['onnx']['path'], int8_path,
                           quantize.calibration_images(size, args.calibration_images))
    models['onnx_int8'] = load_onnx(int8_path, num_threads=args.threads)
  rng = np.random.default_rng(0)
  registry = Registry.for_model(jax_model)
  registry.add_embeddings('x', l2_normalize(rng.standard_normal(
      (args.registry_size, jax_model.embed_dim), np.float32)))
  registry.labels = [f't{i}' for i in range(args.registry_size)]  # one entry per type
  registry.threshold = 0.5
  image = rng.integers(0, 256, (size * 3, size * 2, 3), np.uint8)  # a 'scan', resized per call
  png = os.path.join(tmp, 'capture.png')
  Image.fromarray(image).save(png)
  batch = rng.integers(0, 256, (args.batch, size, size, 3), np.uint8)

  def end_to_end(model):
    def run():
      pixels = load_image(png, model.preprocessing)[None]
      return registry.classify_embeddings(model.embed(pixels))
    return run

  def model_only(model, images):
    return lambda: model.embed(images)

  cases = {
      'model_only/batch=1': {k: model_only(m, batch[:1]) for k, m in models.items()},
      f'model_only/batch={args.batch}': {k: model_only(m, batch) for k, m in models.items()},
      'end_to_end/batch=1': {k: end_to_end(m) for k, m in models.items()},
  }
  model_name = jax_model.source or args.checkpoint
  config = jax_model.model_config
  for case, cands in cases.items():
    n = args.batch if f'batch={args.batch}' in case and args.batch != 1 else 1
    times = timing.interleaved_times(cands, args.rounds, warmup=2)
    base = timing.summary(times['jax'])['wall_ms_median']
    for name in cands:
      s = timing.summary(times[name])
      timing.emit({'bench': 'classify_latency', 'case': case, 'runtime': name,
                   'image_size': size, **s, 'ms_per_image': round(s['wall_ms_median'] / n, 3),
                   'images_per_s': round(1e3 * n / s['wall_ms_median'], 1),
                   'ratio_to_jax': round(s['wall_ms_median'] / base, 3),
                   'registry_entries': args.registry_size, 'threads': args.threads,
                   'backbone': config.get('backbone'), 'width': config.get('width'),
                   'head': config.get('head'), 'model': model_name, **timing.environment()})
  reference = jax_model.embed(batch)
  timing.emit({'bench': 'classify_latency', 'case': 'parity', 'images': len(batch),
               **{f'{k}_max_abs_diff': float(np.abs(m.embed(batch) - reference).max())
                  for k, m in models.items() if k != 'jax'},
               **{f'{k}_min_cosine': float((m.embed(batch) * reference).sum(1).min())
                  for k, m in models.items() if k != 'jax'}})


if __name__ == '__main__':
  main()
