"""Input pipeline images/s beside the trainer's images/s: is the pipeline the bottleneck?

  python benchmarks/input_pipeline.py                        # demo config, 128 px, full aug
  python benchmarks/input_pipeline.py --root=/data/docs      # your own folder instead
  python benchmarks/input_pipeline.py --sources=paperwork    # rendered paperwork (the demo's data)
  python benchmarks/input_pipeline.py --sources=paperwork --config=configs/release.py

The pipeline is the trainer's own entry point (input_pipeline.train_data.create_train_iterator)
on a folder of generated document photos (JPEG, ~500-900 px, like phone captures; nothing from
../shared/data is read) with every augmentation op of c.data.augment at its default probability.
The trainer is the jitted train step of --config (default configs/arcface_clip.py:demo) on one
prepared batch. Both are timed round-robin (pipeline, trainer, pipeline, ...) so load from other
processes hits both alike; each prints one JSON line with the median images/s, then a summary
line with the ratio pipeline / trainer (target >= 2).
Both run alone here; in training they share the cores, which is why the target is 2x.
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from benchmarks import timing  # pylint: disable=g-import-not-at-top


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--root', default='', help='folder root/<type>/<image>; default: generated')
  p.add_argument('--sources', default='folder', help="comma list, e.g. 'folder,paperwork'")
  p.add_argument('--config', default='configs/arcface_clip.py:demo',
                 help='configs/<name>.py[:variant] whose model and data blocks are used')
  p.add_argument('--weights', default='', help='comma list; default: equal')
  p.add_argument('--image_size', type=int, default=128)
  p.add_argument('--batches', type=int, default=8, help='batches per timed round')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--types', type=int, default=40)
  p.add_argument('--no_augment', action='store_true')
  p.add_argument('--no_trainer', action='store_true')
  p.add_argument('--default_malloc', action='store_true',
                 help='keep glibc defaults (see cpu_malloc.py)')
  return p.parse_args()


def make_document_folder(root, types, seed=0):
  """types folders of 2 JPEG document photos each, from the synthetic renderer."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  for t in range(types):
    os.makedirs(os.path.join(root, f'type{t:03d}'), exist_ok=True)
    for v in range(2):
      side = int(rng.integers(500, 900))
      img, (x0, y0, x1, y1) = synthetic.render_template(t, v, seed, side)
      Image.fromarray(img[y0:y1, x0:x1]).save(
          os.path.join(root, f'type{t:03d}', f'photo{v}.jpg'), quality=int(rng.integers(75, 95)))


def make_config(args, root):
  import importlib  # pylint: disable=g-import-not-at-top
  path, _, variant = args.config.partition(':')
  module = importlib.import_module(os.path.splitext(path)[0].replace('/', '.'))
  c = module.get_config(variant or None)
  c.data.image_size = args.image_size
  sources = tuple(args.sources.split(','))
  c.data.sources = sources
  c.data.weights = (tuple(float(w) for w in args.weights.split(',')) if args.weights
                    else (1.0,) * len(sources))
  c.data.folder.root = root
  c.data.augment.enabled = not args.no_augment
  return c


def pipeline_candidate(config, batches):
  from input_pipeline import train_data  # pylint: disable=g-import-not-at-top
  it, num_classes = train_data.create_train_iterator(config, start_step=0)
  for _ in range(3):  # fill the prefetch buffer and autotune's first guesses
    next(it)

  def run():
    for _ in range(batches):
      next(it)
  return run, num_classes, next(it)


def trainer_candidate(config, batch, num_classes, batches):
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  import train  # pylint: disable=g-import-not-at-top
  mesh = train.create_mesh(config)
  model = train.build_model(config.model)
  lr_fn = train.create_learning_rate_fn(config)
  tx = train.create_optimizer(config, lr_fn)
  init = lambda rng: train.init_train_state(config, model, tx, rng, num_classes, mesh)
  shardings = train.state_shardings(jax.eval_shape(init, jax.random.PRNGKey(0)), config, mesh)
  state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))
  batch_sharding = NamedSharding(mesh, P(train.BATCH_AXES))
  step = jax.jit(train.make_train_step(config, model, tx, lr_fn, num_classes),
                 in_shardings=(shardings, batch_sharding, NamedSharding(mesh, P())),
                 out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=(0,))
  device_batch = train.global_batch({k: batch[k] for k in ('image', 'label')}, batch_sharding)
  rng = jax.random.PRNGKey(1)
  holder = [state]

  def run():
    for _ in range(batches):
      holder[0], metrics = step(holder[0], device_batch, rng)
    jax.block_until_ready(metrics)
  return run


def main():
  args = parse_args()
  timing.reexec_with_malloc_tunables(not args.default_malloc)
  with tempfile.TemporaryDirectory() as tmp:
    root = args.root
    if not root and 'folder' in args.sources:
      root = os.path.join(tmp, 'docs')
      make_document_folder(root, args.types)
    config = make_config(args, root)
    pipeline, num_classes, batch = pipeline_candidate(config, args.batches)
    candidates = {'pipeline': pipeline}
    if not args.no_trainer:
      candidates['trainer'] = trainer_candidate(config, batch, num_classes, args.batches)
    times = timing.interleaved_times(candidates, args.rounds)
  images = args.batches * config.batch_size
  rates = {}
  for name, samples in times.items():
    s = timing.summary(samples)
    rates[name] = round(images / (s['wall_ms_median'] / 1e3), 1)
    timing.emit({'bench': 'input_pipeline', 'candidate': name, 'images_per_s_median': rates[name],
                 'images_per_round': images, 'image_size': config.data.image_size,
                 'sources': list(config.data.sources), 'augment': config.data.augment.enabled,
                 **s, **timing.environment()})
  if 'trainer' in rates:
    timing.emit({'bench': 'input_pipeline', 'summary': True, 'pipeline_images_per_s':
                 rates['pipeline'], 'trainer_images_per_s': rates['trainer'],
                 'ratio_pipeline_over_trainer': round(rates['pipeline'] / rates['trainer'], 2),
                 'target_ratio': 2.0})


if __name__ == '__main__':
  main()
