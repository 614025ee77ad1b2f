"""Training loop: an embedding model with a margin-softmax head, sharded over a ('data', 'model') mesh.

Read top to bottom: mesh, input, model and optimizer, sharding, update step, checkpoint restore,
evaluation, loop.
"""
import contextlib
import functools
import re
import time

from absl import logging
from clu import metric_writers
from clu import periodic_actions
from etils import epath
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from configs.validate import resolve_mesh_shape, validate_config
from errors import ConfigError, DataError, RunStopped
import file_io
from evaluation import evaluators
from input_pipeline import train_data
from losses import distill
from losses import margin
from losses import partial_fc
from models import pretrained
from models import teacher as teacher_lib
from models.embedder import build_model
import workdir as workdir_lib


# ---------------------------------------------------------------------------------------------
# Mesh.
# ---------------------------------------------------------------------------------------------

def create_mesh(config):
  data, model = resolve_mesh_shape(config, jax.device_count())
  return jax.make_mesh((data, model), ('data', 'model'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


# The batch is split over every device: the backbone is data parallel on the whole mesh, while
# the class centres are split over 'model' (as PartialFC splits them over GPUs).
BATCH_AXES = ('data', 'model')


# ---------------------------------------------------------------------------------------------
# Model, head and optimizer.
# ---------------------------------------------------------------------------------------------

@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: dict          # {'model': backbone + embedding head, 'head': {'centers': [C, D]}}
  batch_stats: dict
  # optax state of params; with sparse_centers(config) it covers every parameter but the centres,
  # which have their own AdamW moments: {'tx': optax state, 'centers': {'mu', 'nu'}}.
  opt_state: optax.OptState
  nonfinite_steps: jnp.ndarray  # steps whose loss or gradient was NaN/Inf (update skipped)


def sparse_centers(config):
  """True when W is updated row-sparsely (PartialFC with loss.center_update='sparse')."""
  return bool(config.loss.partial_fc) and config.loss.center_update == 'sparse'


def without_centers(params):
  return {k: v for k, v in params.items() if k != 'head'}


def create_learning_rate_fn(config):
  opt = config.optimizer
  warmup = optax.linear_schedule(0.0, opt.learning_rate, max(opt.warmup_steps, 1))
  decay_steps = max(config.num_train_steps - opt.warmup_steps, 1)
  end = opt.learning_rate * opt.end_lr_factor
  if opt.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(opt.learning_rate, decay_steps, alpha=opt.end_lr_factor)
  elif opt.schedule == 'polynomial':
    decay = optax.polynomial_schedule(opt.learning_rate, end, opt.poly_power, decay_steps)
  else:
    decay = optax.constant_schedule(opt.learning_rate)
  return optax.join_schedules([warmup, decay], [opt.warmup_steps])


def create_optimizer(config, lr_fn):
  opt = config.optimizer
  # No weight decay on biases and norm scales (1-d parameters).
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  adamw = optax.adamw(lr_fn, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask)
  # A pretrained backbone keeps its ImageNet features better when it moves slower than the new
  # head (and not at all for the first backbone_frozen_steps): its updates are scaled.
  factor = float(opt.get('backbone_lr_factor', 1.0))
  frozen = int(opt.get('backbone_frozen_steps', 0))
  if factor != 1.0 or frozen:
    backbone_scale = optax.scale_by_schedule(
        lambda count: jnp.where(count < frozen, 0.0, factor))
    # params['model'] holds the backbone and the embedding head ('model/head/...').
    is_backbone = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: _path_str(path).split('/')[0] == 'model' and
        _path_str(path).split('/')[1] != 'head', params)
    adamw = optax.chain(adamw, optax.masked(backbone_scale, is_backbone))
  if sparse_centers(config):
    # The step clips jointly with the centres' row gradients, which optax never sees.
    return adamw
  return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), adamw)


def init_train_state(config, model, tx, rng, num_classes, mesh, teacher_dim=0):
  size = config.data.image_size
  model_rng, head_rng = jax.random.split(rng)
  variables = model.init(model_rng, jnp.zeros((1, size, size, 3), jnp.uint8), train=False)
  num_rows = partial_fc.padded_num_classes(num_classes, mesh.shape['model'])
  centers = jax.random.normal(head_rng, (num_rows, config.model.embed_dim), jnp.float32) * 0.01
  params = {'model': variables['params'], 'head': {'centers': centers}}
  if teacher_dim:  # distillation (issue 5): student projection to the teacher's width, no bias
    params['distill_proj'] = distill.init_projection(jax.random.fold_in(rng, 5),
                                                     config.model.embed_dim, teacher_dim)
  if sparse_centers(config):
    opt_state = {'tx': tx.init(without_centers(params)),
                 'centers': {'mu': jnp.zeros_like(centers), 'nu': jnp.zeros_like(centers)}}
  else:
    opt_state = tx.init(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}), opt_state=opt_state,
                    nonfinite_steps=jnp.zeros((), jnp.int32))


# ---------------------------------------------------------------------------------------------
# Sharding rules.
# ---------------------------------------------------------------------------------------------

def _path_str(path):
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def partition_spec(path, leaf, config, mesh):
  """PartitionSpec of one state leaf, from its name and shape.

  Class centres (and their optimizer moments, optax's or the sparse update's centers/mu|nu) are
  split by rows over 'model'. Everything else is
  replicated, or under 'fsdp' split over 'data' along its largest dimension that divides evenly
  (big_vision's fsdp rule), which keeps large backbones' parameters and moments off every device.
  """
  name = _path_str(path)
  shape = getattr(leaf, 'shape', ())
  if re.search(r'(^|/)centers(/mu|/nu)?$', name) and len(shape) == 2:
    return P('model', None)
  if config.param_sharding == 'fsdp' and np.prod(shape, dtype=np.int64) >= config.fsdp_min_size:
    data = mesh.shape['data']
    for axis in np.argsort(shape)[::-1]:
      if shape[axis] % data == 0:
        spec = [None] * len(shape)
        spec[axis] = 'data'
        return P(*spec)
  return P()


def state_shardings(abstract_state, config, mesh):
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, partition_spec(path, leaf, config, mesh)),
      abstract_state)


def put_from_host(tree, shardings):
  """jax.device_put of values every process holds whole (numpy, or a jax array on one local
  device, as from_pretrained and the ImageNet init return) onto a mesh that may span processes.
  With several processes jax refuses a one-device array as the source ("does not support
  cross-host device transfers"), so those go as numpy; arrays already global stay as they are."""
  if jax.process_count() > 1:
    tree = jax.tree.map(
        lambda x: np.asarray(x) if isinstance(x, jax.Array) and x.is_fully_addressable else x,
        tree)
  return jax.device_put(tree, shardings)


# ---------------------------------------------------------------------------------------------
# Update step.
# ---------------------------------------------------------------------------------------------

def head_loss(config, embeddings, labels, centers, num_classes, rng):
  """The margin-softmax head: dense by default, PartialFC when config.loss.partial_fc."""
  if config.loss.partial_fc:
    # Sharded PartialFC (losses/partial_fc.py) with loss.center_update='dense': W stays split over
    # 'model' (mesh taken from its sharding), only sampled rows enter the softmax, and W gets a
    # dense gradient that optax applies to every row. The 'sparse' default is in make_train_step.
    return partial_fc.partial_fc_loss(embeddings, labels, centers, rng, config.loss,
                                      num_classes=num_classes)
  return margin.dense_margin_loss(embeddings, labels, centers, config.loss, num_classes)


def make_train_step(config, model, tx, lr_fn, num_classes, teacher=None):
  """(state, batch, rng[, teacher_params]) -> (state, metrics). A non-finite loss or gradient
  skips the update. `teacher` (models/teacher.py) is frozen: its parameters come in as an
  argument, outside TrainState, so they get no gradient, optimizer state or checkpoint."""
  opt = config.optimizer

  def keep_if(finite, new, old):  # a non-finite step leaves the state as it was
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

  def train_step(state, batch, rng, teacher_params=None):
    step_rng = jax.random.fold_in(rng, state.step)
    dropout_rng, head_rng = jax.random.split(step_rng)

    def forward(params, head):
      """Loss of `params` (model + distillation projection); head(embeddings) -> (loss, metrics)."""
      embeddings, new_model_state = model.apply(
          {'params': params['model'], 'batch_stats': state.batch_stats}, batch['image'],
          train=True, mutable=['batch_stats'], rngs={'dropout': dropout_rng})
      loss, metrics = head(embeddings)
      # ---- distillation hook (issue 5): teacher features from batch['teacher_image'] ----
      if config.distill.enabled:
        distill_loss, distill_metrics = distill.distill_term(
            config.distill, teacher, teacher_params, params['distill_proj'], embeddings, batch)
        loss = loss + distill_loss
        metrics = dict(metrics, **distill_metrics)
      return loss, (new_model_state['batch_stats'], metrics)

    if sparse_centers(config):
      # PartialFC with a row-sparse update of W: sample and gather the rows outside the gradient,
      # differentiate w.r.t. (other params, rows), clip jointly (the rows' gradients are all of
      # W's non-zero gradient, so the norm equals the dense one), then optax for the rest and
      # sparse AdamW for the rows. W and its moments are only read and written at the sampled
      # rows, shard by shard.
      centers = state.params['head']['centers']
      sample = partial_fc.sample_class_centers(head_rng, batch['label'], num_classes=num_classes,
                                               sample_rate=config.loss.sample_rate)
      rows = partial_fc.gather_centers(centers, sample.index)
      head = lambda rows: lambda emb: partial_fc.margin_softmax_loss(
          emb, rows, sample, config.loss, num_classes=num_classes)
      others = without_centers(state.params)
      (loss, (batch_stats, metrics)), (grads, row_grads) = jax.value_and_grad(
          lambda p: forward(p[0], head(p[1])), has_aux=True)((others, rows))
      grad_norm = optax.tree.norm((grads, row_grads))
      # As optax.clip_by_global_norm.
      clip = lambda g: jnp.where(grad_norm < opt.grad_clip_norm, g,
                                 g / grad_norm * opt.grad_clip_norm)
      grads, row_grads = jax.tree.map(clip, (grads, row_grads))
      updates, tx_state = tx.update(grads, state.opt_state['tx'], others)
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      # A skipped step leaves W's rows as they were inside the sparse update, so W and its
      # moments are not passed through the whole-state select below.
      new_centers, moments = partial_fc.sparse_adamw_update(
          centers, state.opt_state['centers'], sample.index, row_grads, step=state.step + 1,
          learning_rate=lr_fn(state.step), b1=opt.b1, b2=opt.b2,
          weight_decay=opt.weight_decay, apply=finite)
      params = dict(keep_if(finite, optax.apply_updates(others, updates), others),
                    head={'centers': new_centers})
      opt_state = {'tx': keep_if(finite, tx_state, state.opt_state['tx']), 'centers': moments}
    else:
      head = lambda params: lambda emb: head_loss(config, emb, batch['label'],
                                                  params['head']['centers'], num_classes,
                                                  head_rng)
      (loss, (batch_stats, metrics)), grads = jax.value_and_grad(
          lambda p: forward(p, head(p)), has_aux=True)(state.params)
      grad_norm = optax.tree.norm(grads)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      params = keep_if(finite, optax.apply_updates(state.params, updates), state.params)
      opt_state = keep_if(finite, opt_state, state.opt_state)
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        batch_stats=keep_if(finite, batch_stats, state.batch_stats),
        opt_state=opt_state,
        nonfinite_steps=state.nonfinite_steps + (1 - finite.astype(jnp.int32)))
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, learning_rate=lr_fn(state.step))
    return new_state, metrics

  return train_step


# ---------------------------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------------------------

def create_train_state(config, model, tx, rng, num_classes, mesh, teacher_dim=0):
  """(state initialised in place on the mesh, its shardings by the rules above)."""
  init_fn = functools.partial(init_train_state, config, model, tx, num_classes=num_classes,
                              mesh=mesh, teacher_dim=teacher_dim)
  shardings = state_shardings(jax.eval_shape(init_fn, rng), config, mesh)
  return jax.jit(init_fn, out_shardings=shardings)(rng), shardings


def jit_train_step(config, model, tx, lr_fn, num_classes, mesh, shardings, teacher=None):
  """make_train_step jitted: state donated, batch split over every device, rng and teacher
  parameters replicated. Call as step(state, batch, rng, teacher_params or None)."""
  batch_sharding = NamedSharding(mesh, P(BATCH_AXES))
  replicated = NamedSharding(mesh, P())
  return jax.jit(
      make_train_step(config, model, tx, lr_fn, num_classes, teacher=teacher),
      in_shardings=(shardings, batch_sharding, replicated, replicated),
      out_shardings=(shardings, replicated), donate_argnums=(0,))


def checkpoint_dir(workdir):
  """workdir/checkpoints as orbax takes it: an epath.Path, absolute when local, gs://... as is."""
  return epath.Path(file_io.resolve(workdir)) / 'checkpoints'


def create_checkpoint_manager(config, workdir):
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, create=True,
      enable_async_checkpointing=config.async_checkpointing)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def latest_checkpoint_step(workdir):
  """The newest finished step in workdir/checkpoints, read without creating anything; 0 if none."""
  directory = checkpoint_dir(workdir)
  if not file_io.isdir(str(directory)):
    return 0
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
  return manager.latest_step() or 0


def restore_latest(manager, state, shardings):
  """(step, state) of the newest intact checkpoint restored onto `shardings`, or (0, `state`)
  when there is none. A corrupt step is moved aside and the next older one tried (workdir.py);
  a checkpoint that does not fit the config stops the run."""
  if manager.latest_step() is None:
    return 0, state
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
  step, restored = workdir_lib.restore_newest_intact(manager, abstract)
  if restored is None:
    raise RunStopped(f'no intact checkpoint left in {manager.directory} (the corrupt ones were '
                     f'moved to {workdir_lib.CORRUPT_DIR}/ beside it, see the log); run again to '
                     'start from step 0')
  return step, restored


def write_config(config, workdir):
  """config.json next to the checkpoints (inference rebuilds the model from it); atomic."""
  file_io.write_bytes_atomic(file_io.join(workdir, 'config.json'),
                             config.to_json_best_effort(indent=2).encode())


@contextlib.contextmanager
def stop_if_disk_full(manager, step):
  """Around a save (or the wait for an async one): a full disk is one line, its half-written
  step folder removed and the last good checkpoint kept."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  (tensorstore wraps ENOSPC in ValueError)
    if not workdir_lib.is_disk_full(e):
      raise
    # Orbax's background writers may still be writing into the step's temp folder (and would
    # recreate what we remove): let them fail on the same full disk first, then clean.
    try:
      manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except  (the same ENOSPC, from another thread)
      pass
    # A writer thread can still recreate the folder right after the wait: clean until no temp
    # folder is seen twice in a row (bounded: 10 s).
    ckpt_dir, clean_checks, deadline = str(manager.directory), 0, time.time() + 10
    while clean_checks < 2 and time.time() < deadline:
      workdir_lib.clean_orbax_temps(ckpt_dir)
      time.sleep(0.3)
      left = [n for n in file_io.listdir(ckpt_dir) if workdir_lib.ORBAX_TMP in n]
      clean_checks = 0 if left else clean_checks + 1
    manager.reload()
    raise RunStopped(f'disk full while saving the checkpoint of step {step} in {manager.directory}; '
                     f'the last good checkpoint is step {manager.latest_step()} (intact). Free '
                     'space and run the same command again to resume from it.') from None


# ---------------------------------------------------------------------------------------------
# Loop.
# ---------------------------------------------------------------------------------------------

def global_batch(batch, sharding):
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def source_counts(labels, classes):
  """Examples of each source in a (host-local) batch, from the labels alone: source s owns labels
  [first_label_s, first_label_s + num_classes_s) (train_data's class records)."""
  firsts = [c['first_label'] for c in classes]
  return np.bincount(np.searchsorted(firsts, labels, side='right') - 1, minlength=len(firsts))


def source_shares(classes, counts):
  """{'train/share/<source>': its fraction of the examples counted}. Mixing gives every host the
  same quota of its local batch, so process 0's share is the global one."""
  total = max(int(np.sum(counts)), 1)
  return {f'train/share/{c["source"]}': float(n) / total for c, n in zip(classes, counts)}


def describe_centers(centers, num_classes, config):
  """(one log line, hparams) on W as the run holds it, read from the live array's sharding."""
  rows, dim = centers.shape
  block_rows = centers.sharding.shard_shape(centers.shape)[0]
  blocks = rows // block_rows
  sampled = partial_fc.samples_per_shard(num_classes, blocks, config.loss.sample_rate)
  line = (f"PartialFC: W [{rows}, {dim}] held as {blocks} row blocks of {block_rows} over "
          f"'model' ({len(centers.sharding.device_set)} devices); {sampled} of {block_rows} rows "
          f'of each block sampled per step (sample_rate {config.loss.sample_rate}, '
          f'center_update {config.loss.center_update})')
  return line, {'pfc_row_blocks': blocks, 'pfc_rows_per_block': block_rows,
                'pfc_sampled_per_block': sampled}


def train_and_evaluate(config, workdir):
  """Trains, evaluates and checkpoints; resumes from the latest checkpoint in workdir.

  Holds the workdir lock (workdir.py) for the whole run. Everything is checked (config, data,
  checkpoint against the config, free space) before anything is written to the workdir.
  """
  validate_config(config)
  with contextlib.ExitStack() as cleanup:  # also closes files a stopped run still holds open
    if jax.process_index() == 0:
      cleanup.enter_context(workdir_lib.lock(workdir))
    return _train_and_evaluate(config, workdir, cleanup)


def _train_and_evaluate(config, workdir, cleanup):
  mesh = create_mesh(config)
  logging.info('Mesh %s over %d devices, %d processes', dict(mesh.shape), jax.device_count(),
               jax.process_count())

  # ---- Model, optimizer, state ----
  model = build_model(config.model)
  lr_fn = create_learning_rate_fn(config)
  tx = create_optimizer(config, lr_fn)
  if jax.process_index() == 0:  # saves that never finished; we hold the workdir lock
    workdir_lib.clean_orbax_temps(str(checkpoint_dir(workdir)))
  start_step = latest_checkpoint_step(workdir)

  # ---- Input ----
  make_input = lambda step, classes=None: train_data.create_train_iterator(
      config, start_step=step, process_index=jax.process_index(),
      process_count=jax.process_count(), classes=classes)
  classes = []  # label <-> class per source, kept beside the checkpoints (workdir.py)
  train_iter, num_classes = make_input(start_step, classes)
  logging.info('Training on %d classes', num_classes)
  workdir_lib.check_classes(workdir, classes, start_step)
  if num_classes < 2:  # one class: the margin softmax is 0 with zero gradient, nothing is learnt
    raise DataError(f'the training data has {num_classes} class: a model learns nothing from one '
                    'class. Add document types (folder: one sub-folder per type; pdf: more pages '
                    'or label_mode=page), or mix in the synthetic source.')
  if config.loss.partial_fc:  # the sample count must hold a whole global batch's positives
    try:
      partial_fc.validate_partial_fc_config(config, num_classes, mesh.shape['model'],
                                            mesh.shape['data'])
    except ValueError as e:
      raise ConfigError(str(e)) from None

  # ---- Distillation teacher (issue 5): loaded once, frozen, replicated, outside TrainState ----
  teacher, teacher_params, teacher_dim = None, None, 0
  if config.distill.enabled and config.distill.get('cache', ''):
    teacher_dim = teacher_lib.load_feature_cache(config.distill.cache)['features'].shape[1]
    logging.info('Distillation: precomputed teacher features from %s (%d dims)',
                 config.distill.cache, teacher_dim)
  elif config.distill.enabled:
    teacher = teacher_lib.load_teacher(config.distill)
    teacher_dim = teacher.feature_dim
    teacher_params = put_from_host(teacher.params, NamedSharding(mesh, P()))
    logging.info('Distillation: teacher %s, %d features at %d px, %s', teacher.name, teacher_dim,
                 teacher.image_size, jnp.dtype(teacher.dtype).name)
  else:
    logging.info('Distillation: off')

  rng = jax.random.PRNGKey(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  state, shardings = create_train_state(config, model, tx, init_rng, num_classes, mesh,
                                        teacher_dim)
  if config.model.pretrained and not start_step:  # ImageNet init of the backbone (issue 5)
    variables = pretrained.init_backbone_from_pretrained(
        {'params': state.params['model'], 'batch_stats': state.batch_stats},
        config.model.backbone, config.model.pretrained)
    state = put_from_host(state.replace(params=dict(state.params, model=variables['params']),
                                        batch_stats=variables['batch_stats']), shardings)
    logging.info('Backbone initialised from %s', config.model.pretrained)
  eval_sets = evaluators.build_eval_sets(config)  # its data checked before anything is written
  if jax.process_index() == 0:
    workdir_lib.check_free_space(workdir, workdir_lib.state_bytes(state) + 2**20)
  manager = create_checkpoint_manager(config, workdir)
  cleanup.callback(manager.close)
  restored_step, state = restore_latest(manager, state, shardings)
  if restored_step != start_step:  # the newest was corrupt: the input restarts at the older step
    logging.warning('Resuming from step %d instead of %d (see above)', restored_step, start_step)
    start_step = restored_step
    train_iter, _ = make_input(start_step)
  if start_step:
    logging.info('Resumed from checkpoint at step %d', start_step)
  # Only now, with the run known to start or resume cleanly: config.json and the event files.
  if jax.process_index() == 0:
    write_config(config, workdir)
    workdir_lib.write_classes(workdir, classes)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  cleanup.callback(writer.close)
  num_params = sum(x.size for x in jax.tree.leaves(state.params['model']))
  hparams = {'num_params': num_params, 'num_classes': num_classes}
  if config.loss.partial_fc:
    line, pfc = describe_centers(state.params['head']['centers'], num_classes, config)
    logging.info('%s', line)
    hparams.update(pfc)
  writer.write_hparams(hparams)

  batch_sharding = NamedSharding(mesh, P(BATCH_AXES))
  train_step = jit_train_step(config, model, tx, lr_fn, num_classes, mesh, shardings, teacher)

  embed_fn = evaluators.make_embed_fn(model, mesh, batch_sharding)

  # ---- Loop ----
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.num_train_steps, writer=writer, every_steps=config.log_every_steps)
  last_log_time, last_log_step = time.time(), start_step
  metrics_history = []
  counts = np.zeros(len(classes), np.int64)  # examples per source since the last log

  max_bad = int(config.get('max_nonfinite_steps', 0))
  reported_bad = [int(jax.device_get(state.nonfinite_steps))]  # counted since step 0 (restored)

  def check_finite(step):
    """Before each log and save: a few skipped NaN/Inf steps are reported; more than
    config.max_nonfinite_steps stop the run (the count is in the checkpoints, so a restart that
    meets the same batches again stops at the same place instead of looping)."""
    bad = int(jax.device_get(state.nonfinite_steps))
    if bad > max_bad:
      last_good = manager.latest_step()
      raise RunStopped(
          f'loss or gradient became NaN/Inf (at or before step {step}): {bad} steps skipped, over '
          f'config.max_nonfinite_steps={max_bad}; stopping. Parameters were not updated by those '
          f'steps; last good checkpoint: step {last_good} in {workdir} (left intact). Lower the '
          'learning rate or check the data, or allow more skipped steps.')
    if bad > reported_bad[0]:
      logging.warning('%d step(s) with NaN/Inf loss or gradient skipped (not applied) at or '
                      'before step %d; %d in this run so far, the run stops after %d',
                      bad - reported_bad[0], step, bad, max_bad)
      reported_bad[0] = bad

  for step in range(start_step + 1, config.num_train_steps + 1):
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      local = next(train_iter)
      counts += source_counts(local['label'], classes)
      batch = global_batch(local, batch_sharding)
      state, metrics = train_step(state, batch, step_rng, teacher_params)
    metrics_history.append(metrics)
    report_progress(step)

    if step % config.log_every_steps == 0 or step == config.num_train_steps:
      check_finite(step)
      history = jax.device_get(metrics_history)  # one transfer for the whole interval
      summary = {f'train/{k}': float(np.mean([m[k] for m in history])) for k in history[0]}
      now = time.time()
      summary['train/images_per_sec'] = (step - last_log_step) * config.batch_size / (now - last_log_time)
      summary.update(source_shares(classes, counts))
      counts[:] = 0
      if summary['train/loss'] == 0 and summary['train/grad_norm'] == 0:
        raise RunStopped(f'loss and gradient were exactly 0 for steps {last_log_step + 1}-{step}: '
                         'nothing is being learnt (one class per batch, or a broken head); '
                         f'stopping. Last checkpoint: step {manager.latest_step()} in {workdir}.')
      writer.write_scalars(step, summary)
      last_log_time, last_log_step, metrics_history = now, step, []

    if step % config.eval_every_steps == 0 or step == config.num_train_steps:
      with report_progress.timed('eval'):
        variables = {'params': state.params['model'], 'batch_stats': state.batch_stats}
        for name, figures in evaluators.run(eval_sets, embed_fn, variables, config.eval_batch_size):
          writer.write_scalars(step, {f'eval/{name}/{k}': v for k, v in figures.items()})
      last_log_time = time.time()  # eval time is not training throughput

    if step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
      check_finite(step)
      with report_progress.timed('checkpoint'), stop_if_disk_full(manager, step):
        manager.save(step, args=ocp.args.StandardSave(state))

  with stop_if_disk_full(manager, config.num_train_steps):
    manager.wait_until_finished()
  manager.close()
  writer.flush()
  return state
