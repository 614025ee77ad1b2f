"""Training loop of the uncertainty head (issue 14); main.py runs it when config.task is
'uncertainty' (configs/uncertainty.py).

The embedder (config.uncertainty.base: a released-model folder or a training workdir) is loaded
once, frozen and replicated; only models/uncertainty.py's head and its batch norms are trained,
with the mutual-likelihood loss over same-template pairs. Batches are `classes_per_batch`
templates x `captures_per_class` captures (input_pipeline/rendered.grouped_batches), split over
the mesh's devices. The embedding trainer's machinery is reused from train.py: mesh, orbax
checkpoints with resume, config.json, the workdir lock, CLU writers.
"""
import contextlib
import os
import time

from absl import logging
from clu import metric_writers
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from errors import ConfigError, DataError, RunStopped
import file_io
from input_pipeline import rendered
from losses import mls as mls_lib
from models import release_io
from models import uncertainty as uncertainty_lib
from models.embedder import build_model
import train
import workdir as workdir_lib

HEAD_DIR = 'checkpoints'


@flax.struct.dataclass
class HeadState:
  step: jnp.ndarray
  params: dict
  batch_stats: dict
  opt_state: optax.OptState


def load_base(path):
  """(model_config ConfigDict, variables, image_size) of the frozen embedder at `path`."""
  if release_io.is_release(path):
    model_config, variables, image_size, _ = release_io.read_release(path)
    return ml_collections.ConfigDict(model_config), variables, image_size
  config_path = os.path.join(path, 'config.json')
  if not os.path.isfile(config_path):
    raise ConfigError(f'config.uncertainty.base={path!r}: neither a released-model folder '
                      '(model.json + variables.msgpack) nor a training workdir (config.json)')
  base = ml_collections.ConfigDict(file_io.read_json(config_path, 'training config'))
  image_size = int(base.data.image_size)
  abstract = release_io.abstract_variables(base.model, image_size)
  target = {'params': {'model': abstract['params']}, 'batch_stats': abstract['batch_stats']}
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(path), 'checkpoints'),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  if manager.latest_step() is None:
    raise ConfigError(f'config.uncertainty.base={path!r}: the workdir has no finished checkpoint')
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  with workdir_lib.quiet_asyncio():
    restored = manager.restore(manager.latest_step(), args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
  manager.close()
  return base.model, {'params': restored['params']['model'],
                      'batch_stats': restored['batch_stats']}, image_size


def make_steps(embedder, head, tx):
  def features(variables, images):
    mu, squeezed = uncertainty_lib.embed_and_squeezed(embedder, variables, images, head.features)
    return jax.lax.stop_gradient(mu), jax.lax.stop_gradient(squeezed)

  def train_step(state, base_variables, batch):
    mu, squeezed = features(base_variables, batch['image'])

    def loss_fn(params):
      log_var, new_state = head.apply({'params': params, 'batch_stats': state.batch_stats},
                                      squeezed, train=True, mutable=['batch_stats'])
      loss, pairs = mls_lib.mls_loss(mu, log_var, batch['label'])
      return loss, (new_state['batch_stats'], log_var, pairs)

    (loss, (batch_stats, log_var, pairs)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    finite = jnp.isfinite(loss)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new = state.replace(step=state.step + 1,
                        params=keep(optax.apply_updates(state.params, updates), state.params),
                        batch_stats=keep(batch_stats, state.batch_stats),
                        opt_state=keep(opt_state, state.opt_state))
    return new, {'loss': loss, 'pairs': pairs.astype(jnp.float32), 'finite': finite,
                 'mean_log_var': jnp.mean(log_var), 'uncertainty_std': jnp.std(
                     uncertainty_lib.capture_uncertainty(log_var))}

  def eval_step(state, base_variables, batch):
    mu, squeezed = features(base_variables, batch['image'])
    log_var = head.apply({'params': state.params, 'batch_stats': state.batch_stats}, squeezed)
    return mls_lib.mls_loss(mu, log_var, batch['label'])[0]

  return train_step, eval_step


def _check(config):
  u = config.uncertainty
  if config.batch_size != u.classes_per_batch * u.captures_per_class:
    raise ConfigError(f'config.batch_size={config.batch_size} must equal classes_per_batch x '
                      f'captures_per_class = {u.classes_per_batch * u.captures_per_class}')
  if u.captures_per_class < 2:
    raise ConfigError('config.uncertainty.captures_per_class must be at least 2 (same-class pairs)')
  if config.batch_size % jax.device_count():
    raise ConfigError(f'config.batch_size={config.batch_size} must be a multiple of the '
                      f'{jax.device_count()} devices')


def train_and_evaluate(config, workdir):
  _check(config)
  with contextlib.ExitStack() as cleanup:
    if jax.process_index() == 0:
      cleanup.enter_context(workdir_lib.lock(workdir))
    return _train(config, workdir, cleanup)


def _train(config, workdir, cleanup):
  u = config.uncertainty
  if '://' not in u.base:  # config.json must name the base wherever inference later runs
    u.base = os.path.abspath(u.base)
  mesh = train.create_mesh(config)
  model_config, base_variables, image_size = load_base(u.base)
  if config.data.image_size != image_size:
    logging.info('uncertainty: image size %d from the base model (config said %d)', image_size,
                 config.data.image_size)
  embedder = build_model(model_config)
  head = uncertainty_lib.UncertaintyHead(embed_dim=int(model_config.embed_dim), hidden=u.hidden,
                                         init_log_var=u.init_log_var, features=u.features)
  pw = config.data.paperwork
  docs = rendered.RenderedDocuments(rendered.train_templates(pw), pw, image_size)
  held = rendered.RenderedDocuments(rendered.heldout_templates(pw), pw, image_size)
  if docs.num_classes < u.classes_per_batch:
    raise DataError(f'uncertainty: {docs.num_classes} templates rendered, fewer than '
                    f'classes_per_batch={u.classes_per_batch}')

  lr_fn = optax.warmup_cosine_decay_schedule(0.0, config.optimizer.learning_rate,
                                             config.optimizer.warmup_steps, config.num_train_steps)
  tx = optax.adamw(lr_fn, weight_decay=config.optimizer.weight_decay)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(train.BATCH_AXES))
  squeezed_shape = jax.eval_shape(
      lambda x: uncertainty_lib.embed_and_squeezed(embedder, base_variables, x, u.features)[1],
      jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.uint8)).shape
  init = head.init(jax.random.PRNGKey(config.seed), jnp.zeros(squeezed_shape, jnp.float32))
  state = HeadState(step=jnp.zeros((), jnp.int32), params=init['params'],
                    batch_stats=init['batch_stats'], opt_state=tx.init(init['params']))
  state = train.put_from_host(state, replicated)
  base_variables = train.put_from_host(base_variables, replicated)

  if jax.process_index() == 0:
    workdir_lib.clean_orbax_temps(os.path.join(os.path.abspath(workdir), HEAD_DIR))
  manager = train.create_checkpoint_manager(config, workdir)
  cleanup.callback(manager.close)
  start_step = 0
  if manager.latest_step() is not None:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                            state)
    start_step, restored = workdir_lib.restore_newest_intact(manager, abstract)
    if restored is None:
      raise RunStopped(f'no intact checkpoint left in {manager.directory}')
    state = restored
    logging.info('Resumed the uncertainty head from step %d', start_step)
  if jax.process_index() == 0:
    train.write_config(config, workdir)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  cleanup.callback(writer.close)

  batches = rendered.grouped_batches(docs, u.classes_per_batch, u.captures_per_class,
                                     start_step, config.seed, jax.process_index(),
                                     jax.process_count())
  heldout = list(rendered.grouped_batches(held, min(u.classes_per_batch, held.num_classes),
                                          u.captures_per_class, 0, config.seed + 1,
                                          jax.process_index(), jax.process_count())
                 .take(u.heldout_batches).as_numpy_iterator())
  train_step, eval_step = make_steps(embedder, head, tx)
  train_step = jax.jit(train_step, in_shardings=(replicated, replicated, batch_sharding),
                       out_shardings=(replicated, replicated), donate_argnums=(0,))
  eval_step = jax.jit(eval_step, in_shardings=(replicated, replicated, batch_sharding))
  history, last = [], time.time()
  skipped = 0
  it = batches.as_numpy_iterator()
  for step in range(start_step + 1, config.num_train_steps + 1):
    batch = train.global_batch(next(it), batch_sharding)
    state, metrics = train_step(state, base_variables, batch)
    history.append(metrics)
    if step % config.log_every_steps == 0 or step == config.num_train_steps:
      history = jax.device_get(history)
      skipped += sum(not m['finite'] for m in history)
      summary = {f'train/{k}': float(np.mean([m[k] for m in history if m['finite']] or [np.nan]))
                 for k in ('loss', 'mean_log_var', 'uncertainty_std', 'pairs')}
      summary['train/skipped_nonfinite_steps'] = skipped
      summary['train/images_per_sec'] = len(history) * config.batch_size / (time.time() - last)
      writer.write_scalars(step, summary)
      history, last = [], time.time()
    if step % config.eval_every_steps == 0 or step == config.num_train_steps:
      losses = [float(eval_step(state, base_variables, train.global_batch(b, batch_sharding)))
                for b in heldout]
      writer.write_scalars(step, {'eval/paperwork_heldout/mls_loss': float(np.mean(losses))})
    if step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
      with train.stop_if_disk_full(manager, step):
        manager.save(step, args=ocp.args.StandardSave(state))
  with train.stop_if_disk_full(manager, config.num_train_steps):
    manager.wait_until_finished()
  writer.flush()
  return state
