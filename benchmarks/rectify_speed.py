r"""Per-photo cost of rectified embedding on one core (issue 15): detect + warp + embed vs embed.

    python benchmarks/rectify_speed.py                                  # MIDV frames, released models
    python benchmarks/rectify_speed.py --export_dir=/tmp/export         # reuse an `inference.cli
                                                                        #   export --detector` folder
    python benchmarks/rectify_speed.py --export_dir=/tmp/export --runtimes=onnx,onnx_int8

The runtimes, each in this one process: `jax` (the released embedder and corner detector,
jitted), `onnx` (the same two exported as `inference.cli export --detector` does,
inference/export.py, run by onnxruntime) and `onnx_int8` (those two quantized by `python -m
inference.quantize`, done here when the folder lacks them). The photo is decoded once, beforehand
(decoding is the same with or without rectification); each case starts from the decoded uint8
photo and ends with its embedding:
- `embed`: the whole photo stretched to the embedder's square, embedded (what --no-rectify does);
- `detect`: the photo stretched to the detector's square, corners and presence (one pass);
- `detect+zoom`: that and the second pass on the crop around the first quad (inference/detector.py
  DEFAULT_ZOOM);
- `refine`: inference/rectify.py `refine_quad` (numpy + Pillow; the same in both runtimes);
- `warp`: rectify, the Pillow perspective warp straight to the embedder's square (as the CLI does
  for a 'stretch' embedder); `warp_page`: the warp to the page's own size + the stretch (before);
- `detect+warp+embed`: the issue's target (< 20 ms on one core), one detector pass;
- `detect+zoom+warp+embed`: the same with the zoomed second pass: what `--rectify` does by
  default (inference/rectify.py `rectifier`; no refine after the zoom);
- `detect, highest peaks` and `detect+zoom+warp+embed, highest peaks`: the same with
  `shape_prior=0` (each heatmap's highest peak, no page-shape prior): the prior's cost side by side;
- `detect+refine+warp+embed`: what `--rectify --detector-zoom 0` does (one pass, snapped to the
  edges).
Photos: the first `--photos` frames of `--data` (MIDV, quads.csv order), cycled, so every case
sees the same photo in each round; without the data, drawn pages (inference/export.py
detector_check_photos) at 1024 px. Timed round-robin (benchmarks/timing.py), medians of
`--rounds`; one JSON line per case and runtime, then one `target` line.
"""
import argparse
import itertools
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
TARGET_MS = 20.0


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--data', default=os.path.join(REPO, '..', 'shared', 'data', 'midv_photos'),
                 help='folder with quads.csv and its frames (MIDV); drawn pages if absent')
  p.add_argument('--photos', type=int, default=8, help='photos, cycled over the rounds')
  p.add_argument('--embedder', default='', help='default: the released embedder')
  p.add_argument('--detector', default='', help='default: released/corners-v3')
  p.add_argument('--export_dir', help='folder of `inference.cli export --detector` (onnx); '
                 'default: export into a temporary folder now')
  p.add_argument('--runtimes', default='jax,onnx',
                 help='of jax, onnx, onnx_int8 (the exports quantized by inference/quantize.py)')
  p.add_argument('--threads', type=int, default=1)
  p.add_argument('--rounds', type=int, default=15)
  return p.parse_args()


def pin_threads(threads):
  """XLA, BLAS and the process itself on `threads` cores (as benchmarks/classify_latency.py);
  onnxruntime gets the same number in its session options. Before JAX is imported."""
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_cpu_multi_thread_eigen={"true" if threads > 1 else "false"}'
                             f' intra_op_parallelism_threads={threads}')
  for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
    os.environ[var] = str(threads)
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))


def read_photos(data, n):
  """([uint8 [H, W, 3]], description): MIDV frames, or drawn pages when the data is absent."""
  from inference.images import decode_image  # pylint: disable=g-import-not-at-top
  quads_csv = os.path.join(data, 'quads.csv')
  if os.path.isfile(quads_csv):
    from benchmarks.corners_midv import read_frames  # pylint: disable=g-import-not-at-top
    frames = read_frames(data)[:n]
    return [decode_image(path) for path, _ in frames], f'{len(frames)} frames of {data}'
  from inference.export import detector_check_photos  # pylint: disable=g-import-not-at-top
  return list(detector_check_photos(1024, n)), f'{n} drawn pages, 1024 px (no {quads_csv})'


def load_models(args, runtime, export_dir):
  """(embedder, detector) for one runtime."""
  from inference import detector as detector_lib  # pylint: disable=g-import-not-at-top
  from inference import released  # pylint: disable=g-import-not-at-top
  if runtime == 'jax':
    from inference.model import load_model  # pylint: disable=g-import-not-at-top
    return (load_model(args.embedder or released.DEFAULT_DIR),
            detector_lib.load_detector(args.detector or None))
  from inference.onnx_model import load_onnx  # pylint: disable=g-import-not-at-top
  suffix = '.int8.onnx' if runtime == 'onnx_int8' else '.onnx'
  return (load_onnx(os.path.join(export_dir, 'embedder' + suffix), num_threads=args.threads),
          detector_lib.load_detector(os.path.join(export_dir, 'detector' + suffix),
                                     num_threads=args.threads))


def quantize_int8(export_dir):
  """embedder.int8.onnx and detector.int8.onnx beside the float ones, as `python -m
  inference.quantize --onnx` writes them, unless already there."""
  from inference import quantize  # pylint: disable=g-import-not-at-top
  for stem in ('embedder', 'detector'):
    if not os.path.isfile(os.path.join(export_dir, stem + '.int8.onnx')):
      if quantize.main(['--onnx', os.path.join(export_dir, stem + '.onnx')]):
        sys.exit(f'{export_dir}: {stem}.onnx could not be quantized (above)')


def export_onnx(args, jax_models, out_dir):
  """Both models exported as `inference.cli export --formats onnx --detector` does."""
  from inference.export import export_detector, export_model  # pylint: disable=g-import-not-at-top
  embedder, detector = jax_models
  export_model(embedder, out_dir, formats=('onnx',))
  export_detector(detector, out_dir, formats=('onnx',))


def cases(embedder, detector, min_confidence):
  """{case: fn(rgb)}: each ends where its result is ready (an embedding, a quad, pixels)."""
  from inference import rectify  # pylint: disable=g-import-not-at-top
  from inference.detector import DEFAULT_SHAPE_PRIOR, DEFAULT_ZOOM  # pylint: disable=g-import-not-at-top
  from inference.images import to_model_input  # pylint: disable=g-import-not-at-top
  embed = lambda rgb: embedder.embed(to_model_input(rgb, embedder.preprocessing)[None])
  square = rectify.model_square(embedder.preprocessing)  # as the CLI warps
  one_pass_rectifier = rectify.rectifier(detector, min_confidence, square, 0.0)
  found = {}

  def detect(rgb):
    found[id(rgb)] = detector.detect(rgb, zoom=0.0)  # kept for refine / warp, which time only themselves
    return found[id(rgb)]

  def detect_warp_embed(rgb, zoom, shape_prior=DEFAULT_SHAPE_PRIOR):
    found_here = detector.detect(rgb, zoom=zoom, shape_prior=shape_prior)
    image, _ = rectify.rectify_or_whole(rgb, found_here, min_confidence, square)
    return embed(image)

  def warp(rgb, to_square):
    image, _ = rectify.rectify_or_whole(rgb, found[id(rgb)], min_confidence, to_square)
    return to_model_input(image, embedder.preprocessing)

  return {
      'embed': embed,
      'detect': detect,
      'detect+zoom': lambda rgb: detector.detect(rgb, zoom=DEFAULT_ZOOM),
      # The shape prior's cost, side by side: each map's highest peak instead (prior 0).
      'detect, highest peaks': lambda rgb: detector.detect(rgb, zoom=0.0, shape_prior=0.0),
      'refine': lambda rgb: rectify.refine_quad(rgb, found[id(rgb)]['quad']),
      'warp': lambda rgb: warp(rgb, square),
      'warp_page': lambda rgb: warp(rgb, None),
      'detect+warp+embed': lambda rgb: detect_warp_embed(rgb, 0.0),
      'detect+zoom+warp+embed': lambda rgb: detect_warp_embed(rgb, DEFAULT_ZOOM),
      'detect+zoom+warp+embed, highest peaks': lambda rgb: detect_warp_embed(rgb, DEFAULT_ZOOM, 0.0),
      'detect+refine+warp+embed': lambda rgb: embed(one_pass_rectifier(rgb)[0]),
  }


def main():
  args = parse_args()
  pin_threads(args.threads)
  from benchmarks import timing  # pylint: disable=g-import-not-at-top
  from inference.rectify import DEFAULT_MIN_CONFIDENCE  # pylint: disable=g-import-not-at-top
  photos, photo_text = read_photos(args.data, args.photos)
  runtimes = args.runtimes.split(',')
  models = {}
  if 'jax' in runtimes or not args.export_dir:
    models['jax'] = load_models(args, 'jax', None)
  if 'onnx' in runtimes or 'onnx_int8' in runtimes:
    export_dir = args.export_dir
    if not export_dir:
      export_dir = tempfile.mkdtemp(prefix='rectify_speed_')
      export_onnx(args, models['jax'], export_dir)
    if 'onnx_int8' in runtimes:
      quantize_int8(export_dir)
    for runtime in ('onnx', 'onnx_int8'):
      if runtime in runtimes:
        models[runtime] = load_models(args, runtime, export_dir)
  candidates = {}
  for runtime in runtimes:
    for case, fn in cases(*models[runtime], DEFAULT_MIN_CONFIDENCE).items():
      if case in ('refine', 'warp', 'warp_page') and runtime != runtimes[0]:
        continue  # numpy + Pillow: the same code whatever runs the networks
      cycle = itertools.cycle(photos)  # each candidate steps through the photos once per round
      candidates[(runtime, case)] = (lambda f, c: lambda: f(next(c)))(fn, cycle)
  # 'detect' must run before 'refine' and 'warp' on each photo: dicts keep insertion order, and
  # the round-robin calls the candidates in that order every round (warmup included).
  times = timing.interleaved_times(candidates, args.rounds * len(photos), warmup=len(photos))
  medians = {}
  for (runtime, case), samples in times.items():
    s = timing.summary(samples)
    medians[(runtime, case)] = s['wall_ms_median']
    embedder, detector = models[runtime]
    timing.emit({'bench': 'rectify_speed', 'case': case,
                 'runtime': runtime if case not in ('refine', 'warp', 'warp_page') else 'numpy+pillow', **s,
                 'ratio_to_embed': round(s['wall_ms_median'] / medians[(runtime, 'embed')], 2),
                 'photos': photo_text, 'photo_px': [list(p.shape[:2]) for p in photos][:1],
                 'embedder': embedder.source, 'embedder_px': embedder.preprocessing['image_size'],
                 'detector': detector.source, 'detector_px': detector.image_size,
                 'threads': args.threads, **timing.environment()})
  timing.emit({'bench': 'rectify_speed', 'case': 'target', 'target_ms': TARGET_MS,
               **{f'{r}_detect+warp+embed_ms': medians[(r, 'detect+warp+embed')] for r in runtimes},
               **{f'{r}_detect+zoom+warp+embed_ms': medians[(r, 'detect+zoom+warp+embed')]
                  for r in runtimes},
               **{f'{r}_detect+refine+warp+embed_ms':
                  medians[(r, 'detect+refine+warp+embed')] for r in runtimes},
               'met': {r: medians[(r, 'detect+warp+embed')] < TARGET_MS for r in runtimes},
               # What --rectify runs by default (zoom + shape prior), against the same target.
               'met_rectify_default': {r: medians[(r, 'detect+zoom+warp+embed')] < TARGET_MS
                                       for r in runtimes}})


if __name__ == '__main__':
  main()
