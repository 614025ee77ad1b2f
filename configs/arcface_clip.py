"""The headline recipe: LCNet-0.5 at 128 px, LN+BN head, ArcFace with PartialFC, CLIP distillation.

  python main.py --config=configs/arcface_clip.py --workdir=gs://bucket/run     # production (TPU)
  python main.py --config=configs/arcface_clip.py:demo --workdir=/tmp/demo     # 2-core CPU, ~15 min

The demo runs the same code on the embedded synthetic documents, with a smaller batch and fewer
steps; every field can still be overridden with --config.x=y.
"""
from configs import default


def get_config(arg=None):
  arg = arg or ''
  if arg not in ('', 'demo'):
    raise ValueError(f'configs/arcface_clip.py: unknown variant {arg!r} (use no arg, or :demo)')
  c = default.get_config()

  c.model.backbone = 'lcnet'
  c.model.width = 0.5
  c.model.head = 'ln_bn'
  c.model.embed_dim = 256
  c.data.image_size = 128

  c.loss.margin = 'arcface'
  c.loss.scale = 64.0
  c.loss.m2 = 0.5

  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 2000
  c.optimizer.grad_clip_norm = 5.0

  if arg == '':
    # ImageNet-1k with every training image its own class (1,281,167 classes) + document folders
    # + synthetic documents; PartialFC keeps 30% of the class centres per step.
    c.data.sources = ('imagenet_per_image', 'folder', 'synthetic')
    c.data.weights = (0.8, 0.1, 0.1)
    c.loss.partial_fc = True
    c.loss.sample_rate = 0.3
    c.distill.enabled = True
    c.distill.teacher = 'openai/clip-vit-base-patch32'
    c.distill.weight = 1.0
    c.batch_size = 1024
    c.num_train_steps = 50_000
    c.model.dtype = 'bfloat16'
    c.mesh.data = -1
    c.mesh.model = 1
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 2000
    c.log_every_steps = 100

  if arg == 'demo':
    # CPU, one device, ~15 minutes: synthetic documents only. From scratch, s=64/m=0.4 over 1000
    # classes barely moves in this budget (measured: loss 38 -> 36, held-out AUROC 0.49 at step
    # 375); CosFace with s=32, m=0.2 over 300 templates starts learning within the run.
    c.loss.margin = 'cosface'
    c.loss.scale = 32.0
    c.loss.m3 = 0.2
    c.data.synthetic.num_templates = 300
    # Captures at half the full degradation (README "What the demo gives"): at full strength the
    # demo model reaches held-out AUROC 0.75 and TPR@1e-4 0.002 in this budget, at 0.5 AUROC 0.96
    # and TPR@1e-4 0.08. 100 held-out templates (79,200 negative pairs): FPR 1e-4 is then decided
    # by the 7 highest negatives, not 1.
    c.data.synthetic.capture_strength = 0.5
    c.data.synthetic.heldout_templates = 100
    c.batch_size = 64
    c.num_train_steps = 1500
    c.optimizer.warmup_steps = 100
    c.log_every_steps = 25
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 250
  return c
