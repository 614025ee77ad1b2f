"""The headline recipe: LCNet-0.5 at 128 px, LN+BN head, ArcFace with PartialFC, CLIP distillation.

  python main.py --config=configs/arcface_clip.py --workdir=gs://bucket/run     # production (TPU)
  python main.py --config=configs/arcface_clip.py:demo --workdir=/tmp/demo     # 2-core CPU, ~12 min
  python main.py --config=configs/arcface_clip.py:smoke --workdir=/tmp/smoke \
    --config.distill.teacher=CLIP_DIR --config.data.folder.root=DOCS \
    --config.data.imagenet_per_image.data_dir=TFDS_DIR                       # every part, toy size

The demo runs the same code on rendered paperwork (input_pipeline/paperwork.py), with a smaller
batch and fewer steps; every field can still be overridden with --config.x=y.
The smoke variant is the production recipe (the no-arg config) with every size shrunk and nothing
else changed: all three sources, CLIP distillation, sparse PartialFC with W split over 'model',
bf16, in-training eval and checkpoints, in a minute on 8 faked CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8). tests/test_smoke_run.py runs it.
"""
from configs import default


def get_config(arg=None):
  arg = arg or ''
  if arg not in ('', 'demo', 'smoke'):
    raise ValueError(f'configs/arcface_clip.py: unknown variant {arg!r} (use no arg, :demo or '
                     ':smoke)')
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

  if arg in ('', 'smoke'):  # smoke: these choices, then only sizes shrunk below
    # ImageNet-1k with every training image its own class (1,281,167 classes) + document folders
    # + rendered paperwork; PartialFC keeps 30% of the class centres per step.
    c.data.sources = ('imagenet_per_image', 'folder', 'paperwork')
    c.data.weights = (0.8, 0.1, 0.1)
    c.loss.partial_fc = True
    c.loss.sample_rate = 0.3
    c.distill.enabled = True
    c.distill.teacher = 'openai/clip-vit-base-patch32'
    c.distill.weight = 1.0
    c.batch_size = 1024
    c.num_train_steps = 50_000
    c.model.dtype = 'bfloat16'
    # W (1.28M x 256) and its two AdamW moments split over every chip: XLA's memory analysis of
    # the whole step on 32 faked devices gives 6.34 GiB per chip with W whole on each (32 x 1),
    # 1.93 GiB at 8 x 4, 0.76 GiB at 1 x 32; split over all chips, the sampled rows' gradients
    # also need no all-reduce over 'data' (README, PartialFC: benchmarks/partial_fc.py
    # --pod_train_step ... --meshes). The batch is over every device either way (BATCH_AXES).
    # Rate 0.3 keeps ceil(0.3 * classes / chips) >= 1024 centres per chip up to ~375 chips;
    # past that the run stops at start saying so (set mesh.model to a divisor).
    c.mesh.data = 1
    c.mesh.model = -1
    # The logits per chip are [1024, 0.3 * 1.28M / chips] (~50 MB on 32 chips): no chunking.
    # A 29M-class pod at global batch 8192 needs it: --config.loss.logit_chunk=1024 (README).
    c.loss.logit_chunk = 0
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 2000
    c.log_every_steps = 100

  if arg == 'smoke':
    # Sizes, step counts, the mesh and the conv implementation only: a choice the production run
    # makes (sources and their weights, ArcFace, PartialFC rate 0.3 with the sparse W update, the
    # CLIP teacher on each source's clean view, bf16, async checkpoints) is not changed here.
    # Paths it cannot know come from the command line:
    #   --config.distill.teacher=<dir of a CLIP saved by save_pretrained>
    #   --config.data.folder.root=<root/<type>/<image>>
    #   --config.data.imagenet_per_image.data_dir=<TFDS dir holding a prepared imagenet2012>
    # No default teacher: without the flag the run stops at start naming the field, instead of
    # fetching ViT-B/32 from the hub for a toy run.
    c.distill.teacher = ''
    c.distill.image_size = 32        # the clean view at a tiny CLIP's own resolution
    c.data.image_size = 32           # validate.py's minimum
    c.model.width = 0.25
    c.model.squeeze_channels = 8
    c.model.embed_dim = 32
    # What 'auto' resolves to on a TPU, i.e. what the production run executes. On CPU 'auto' would
    # take the bf16 fallbacks (shifted taps, matmul convs: the native kernels are float32 only),
    # whose compile costs this run ~25 s more on two cores.
    c.model.depthwise_impl = 'xla'
    c.model.conv_impl = 'xla'
    # 2 x 4 on 8 devices: W really split over 'model', and the 'data' axis more than one wide
    # too (the production config splits W over every chip, data = 1).
    c.mesh.data = 2
    c.mesh.model = 4
    # Rate 0.3 must hold a global batch's positives on one shard (losses/partial_fc.py):
    # ceil(0.3 * classes / 4) >= 32, i.e. >= ~430 classes, so the ImageNet split needs ~420+ images.
    c.batch_size = 32
    c.eval_batch_size = 32
    c.data.imagenet_per_image.shuffle_buffer = 64
    c.data.paperwork.num_templates = 6
    c.data.paperwork.copies = 2
    c.data.paperwork.template_size = 48
    c.data.paperwork.render_workers = 1   # 12 tiny pages: spawning render processes costs more
    c.data.synthetic.num_templates = 16   # only the held-out eval set is made from it
    c.data.synthetic.template_size = 48
    c.data.synthetic.heldout_templates = 6
    c.data.synthetic.heldout_captures = 3
    c.num_train_steps = 8
    c.optimizer.warmup_steps = 1
    c.log_every_steps = 2
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 4

  if arg == 'demo':
    # CPU, one device, ~12 minutes (measured: README): rendered paperwork only (input_pipeline/paperwork.py), from
    # scratch. CosFace with s=32, m=0.2 over 300 templates starts learning within the run
    # (s=64/m=0.4 over 1000 classes barely moved in this budget on the earlier cartoon data).
    c.loss.margin = 'cosface'
    c.loss.scale = 32.0
    c.loss.m3 = 0.2
    c.data.sources = ('paperwork',)
    c.data.weights = (1.0,)
    c.data.paperwork.num_templates = 300
    # Captures at half the full degradation: a 10-minute model from scratch learns milder captures
    # (measured on the cartoon generator: held-out AUROC 0.75 at full strength, 0.96 at half).
    c.data.paperwork.capture_strength = 0.5
    c.data.paperwork.heldout_templates = 100
    c.batch_size = 64
    c.num_train_steps = 1500
    c.optimizer.warmup_steps = 100
    c.log_every_steps = 25
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 250
    # Real captures in TensorBoard beside the held-out renders (evaluation only, never trained
    # on); left out with a warning where ../shared/data is not there.
    c.eval_sets = ('paperwork_heldout', 'folder:../shared/data/us_forms',
                   'folder:../shared/data/sroie_merchants')
    c.eval_missing_folders = 'skip'
  return c
