"""Training-step speed on CPU: the project's jitted train step vs its PyTorch twin.

  python benchmarks/train_step_speed.py                       # batch 64 and 256, 128 px
  python benchmarks/train_step_speed.py --batches=64 --impls=auto,xla --forward

Times train.make_train_step (the real step: configs/arcface_clip.py:demo model, CosFace over
--num_classes classes, AdamW, jitted and donated as train.py does) against
benchmarks/torch_lcnet.py (NCHW and channels-last). Candidates run round-robin; one JSON line
per candidate with median ms/step, images/s and the ratio JAX/PyTorch (against the faster
PyTorch layout). Data loading is not timed: batches are prepared on the device beforehand.
--forward also times the inference forward pass (inference/model.make_embed_fn) at batch 1
and 64 against the twin in eval mode.
"""
import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from benchmarks import timing  # pylint: disable=g-import-not-at-top


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batches', default='64,256')
  p.add_argument('--image_size', type=int, default=128)
  p.add_argument('--num_classes', type=int, default=20000)
  p.add_argument('--impls', default='auto',
                 help='config.model.depthwise_impl values to time (comma-separated)')
  p.add_argument('--dtypes', default='float32', help='config.model.dtype values (JAX side)')
  p.add_argument('--torch_layouts', default='nchw,nhwc')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--forward', action='store_true', help='also time the inference forward pass')
  p.add_argument('--forward_batches', default='1,64')
  p.add_argument('--default_malloc', action='store_true',
                 help='keep glibc defaults (see benchmarks/timing.py MALLOC_TUNABLES)')
  return p.parse_args()


def demo_config(args, batch, impl, dtype):
  from configs import arcface_clip  # pylint: disable=g-import-not-at-top
  config = arcface_clip.get_config('demo')
  config.batch_size = batch
  config.data.image_size = args.image_size
  config.model.depthwise_impl = impl
  config.model.dtype = dtype
  return config


def jax_train_step(args, batch, impl, dtype, images, labels):
  """A zero-argument callable running one real train step (state carried between calls)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  import train  # pylint: disable=g-import-not-at-top
  from models.embedder import build_model  # pylint: disable=g-import-not-at-top
  config = demo_config(args, batch, impl, dtype)
  model = build_model(config.model)
  mesh = train.create_mesh(config)
  lr_fn = train.create_learning_rate_fn(config)
  tx = train.create_optimizer(config, lr_fn)
  rng = jax.random.PRNGKey(0)
  # As train.train_and_evaluate builds and jits the step.
  init_fn = functools.partial(train.init_train_state, config, model, tx,
                              num_classes=args.num_classes, mesh=mesh)
  shardings = train.state_shardings(jax.eval_shape(init_fn, rng), config, mesh)
  batch_sharding = NamedSharding(mesh, P(train.BATCH_AXES))
  replicated = NamedSharding(mesh, P())
  step_fn = jax.jit(train.make_train_step(config, model, tx, lr_fn, args.num_classes),
                    in_shardings=(shardings, batch_sharding, replicated),
                    out_shardings=(shardings, replicated), donate_argnums=(0,))
  state = {'state': jax.jit(init_fn, out_shardings=shardings)(rng)}
  device_batch = train.global_batch({'image': images, 'label': labels}, batch_sharding)

  def run():
    state['state'], metrics = step_fn(state['state'], device_batch, rng)
    jax.block_until_ready(metrics['loss'])

  return run, state


def jax_forward(args, batch, impl, dtype, images, variables):
  import jax  # pylint: disable=g-import-not-at-top
  from inference.model import make_embed_fn  # pylint: disable=g-import-not-at-top
  from models.embedder import build_model  # pylint: disable=g-import-not-at-top
  model = build_model(demo_config(args, batch, impl, dtype).model)
  fn = jax.jit(make_embed_fn(model, variables))
  return lambda: jax.block_until_ready(fn(images))


def torch_twin(args, layout, images, labels):
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_lcnet  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = torch_lcnet.Embedder(image_size=args.image_size)
  step = torch_lcnet.make_train_step(model, args.num_classes, channels_last=layout == 'nhwc')
  x = torch_twin_input(images, layout)
  y = torch.from_numpy(labels).long()
  return lambda: step(x, y), model, x


def torch_forward(model, x):
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  def run():
    model.eval()
    with torch.no_grad():
      F.normalize(model(x), dim=1)

  return run


def report(kind, times, batch, meta):
  """One JSON line per candidate; ratio against the fastest PyTorch layout."""
  medians = {name: timing.summary(s)['wall_ms_median'] for name, s in times.items()}
  torch_best = min((m for name, m in medians.items() if name[0] == 'torch'), default=None)
  for name, samples in times.items():
    framework, variant = name
    rec = {'bench': kind, 'framework': framework, 'variant': variant, 'batch': batch}
    rec.update(meta)
    rec.update(timing.summary(samples))
    rec['images_per_s'] = round(batch * 1e3 / rec['wall_ms_median'], 1)
    if torch_best and framework == 'jax':
      rec['ratio_jax_over_torch'] = round(rec['wall_ms_median'] / torch_best, 3)
    rec.update(timing.environment())
    timing.emit(rec)


def main():
  args = parse_args()
  timing.reexec_with_malloc_tunables(not args.default_malloc)
  import numpy as np  # pylint: disable=g-import-not-at-top
  impls, dtypes = args.impls.split(','), args.dtypes.split(',')
  layouts = [l for l in args.torch_layouts.split(',') if l]
  meta = {'image_size': args.image_size, 'num_classes': args.num_classes}
  for batch in (int(b) for b in args.batches.split(',')):
    rng = np.random.default_rng(batch)
    images = rng.integers(0, 256, (batch, args.image_size, args.image_size, 3), np.uint8)
    labels = rng.integers(0, args.num_classes, (batch,)).astype(np.int32)
    cands, torch_models, last_state = {}, {}, None
    for impl in impls:
      for dtype in dtypes:
        cands[('jax', f'{impl}/{dtype}')], last_state = jax_train_step(
            args, batch, impl, dtype, images, labels)
    for layout in layouts:
      cands[('torch', layout)], model, x = torch_twin(args, layout, images, labels)
      torch_models[layout] = (model, x)
    report('train_step', timing.interleaved_times(cands, args.rounds, args.warmup), batch, meta)

  if args.forward:
    import jax  # pylint: disable=g-import-not-at-top
    state = last_state['state']
    variables = jax.device_get({'params': state.params['model'],
                                'batch_stats': state.batch_stats})
    for batch in (int(b) for b in args.forward_batches.split(',')):
      images = np.random.default_rng(batch).integers(
          0, 256, (batch, args.image_size, args.image_size, 3), np.uint8)
      cands = {}
      for impl in impls:
        for dtype in dtypes:
          cands[('jax', f'{impl}/{dtype}')] = jax_forward(args, batch, impl, dtype, images,
                                                          variables)
      for layout in layouts:
        model, _ = torch_models[layout]
        x = torch_twin_input(images, layout)
        cands[('torch', layout)] = torch_forward(model, x)
      report('forward', timing.interleaved_times(cands, args.rounds * 2, args.warmup), batch,
             meta)


def torch_twin_input(images, layout):
  """The pipeline's NHWC uint8 batch, permuted: that is already a channels-last NCHW tensor."""
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.from_numpy(images).permute(0, 3, 1, 2)
  return x.contiguous(memory_format=torch.channels_last if layout == 'nhwc' else
                      torch.contiguous_format)


if __name__ == '__main__':
  main()
