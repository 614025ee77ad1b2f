"""Training loop of the document corner detector (issue 15); main.py runs it when config.task is
'corners' (configs/corners.py).

The embedding trainer's machinery, reused from train.py: the ('data', 'model') mesh, the
optimizer and schedule (backbone at backbone_lr_factor), TrainState and its sharding rules, orbax
checkpoints with resume and the corrupt-step fallback, config.json, the workdir lock, CLU
writers. What differs is the model (models/corners.py), the data (input_pipeline/corner_data.py),
the loss and the evaluation (corner error and quad IoU on held-out rendered photos).
"""
import contextlib
import functools
import os
import time

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from configs.validate import validate_config
from errors import ConfigError, RunStopped
from inference import quads
from input_pipeline import corner_data
from models import corners as corners_lib
from models import release_io
import train
import workdir as workdir_lib


def validate_corner_config(config):
  cc = config.corners
  if config.model.backbone != 'mobilenet_v2':
    raise ConfigError(f'config.model.backbone={config.model.backbone!r}: the corner detector '
                      'has a mobilenet_v2 trunk')
  if config.data.image_size % 32:
    raise ConfigError(f'config.data.image_size={config.data.image_size}: a multiple of 32')
  if not 0.0 <= cc.data.negative_share < 1.0:
    raise ConfigError(f'config.corners.data.negative_share={cc.data.negative_share}: in [0, 1)')
  g = cc.data.geometry
  if len(g.frame_aspects) != len(g.frame_weights) or min(g.frame_weights) < 0:
    raise ConfigError('config.corners.data.geometry: one non-negative weight per frame aspect')
  if not 0.0 < g.fill_min <= g.fill_max:
    raise ConfigError('config.corners.data.geometry: need 0 < fill_min <= fill_max')
  if not 0.0 <= g.get('full_page_share', 0.0) <= 1.0:
    raise ConfigError(f'config.corners.data.geometry.full_page_share={g.full_page_share}: in [0, 1]')
  if not 0.0 <= g.get('full_page_inset', 0.0) < 0.5:
    raise ConfigError(f'config.corners.data.geometry.full_page_inset={g.full_page_inset}: in [0, 0.5)')


# ---------------------------------------------------------------------------------------------
# State and loss.
# ---------------------------------------------------------------------------------------------

def init_state(config, model, tx, rng):
  size = config.data.image_size
  variables = model.init(rng, jnp.zeros((1, size, size, 3), jnp.uint8), train=False)
  params = {'model': variables['params']}
  return train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables['batch_stats'], opt_state=tx.init(params),
                          nonfinite_steps=jnp.zeros((), jnp.int32))


def gaussian_targets(corners, h, w, sigma):
  """[B, 4, 2] corners in [0, 1] -> [B, H, W, 4] normalised Gaussians (sigma in cells)."""
  ys, xs = corners_lib.cell_centres(h, w)
  dx = (xs[None, None, :, None] - corners[:, None, None, :, 0]) * w
  dy = (ys[None, :, None, None] - corners[:, None, None, :, 1]) * h
  g = jnp.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2))
  return g / jnp.maximum(jnp.sum(g, axis=(1, 2), keepdims=True), 1e-12)


def corner_loss(cc, out, batch):
  """(loss, metrics): coordinate L1 and heatmap cross-entropy over images with a page, presence
  BCE over all."""
  present = batch['present']
  n = jnp.maximum(jnp.sum(present), 1.0)
  l1 = jnp.mean(jnp.abs(out['corners'] - batch['corners']), axis=(1, 2))
  _, logp = corners_lib.soft_argmax(out['heatmaps'])
  h, w = logp.shape[1:3]
  ce = -jnp.sum(gaussian_targets(batch['corners'], h, w, cc.heatmap_sigma) * logp, axis=(1, 2, 3)) / 4
  bce = optax.sigmoid_binary_cross_entropy(out['presence'], present)
  coord, heat = jnp.sum(l1 * present) / n, jnp.sum(ce * present) / n
  loss = cc.coord_weight * coord + cc.heatmap_weight * heat + cc.presence_weight * jnp.mean(bce)
  correct = (out['presence'] > 0) == (present > 0.5)
  return loss, {'coord_l1': coord, 'heatmap_ce': heat, 'presence_bce': jnp.mean(bce),
                'presence_acc': jnp.mean(correct.astype(jnp.float32))}


def make_train_step(config, model, tx, lr_fn):
  def train_step(state, batch, rng):
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      out, new_model_state = model.apply(
          {'params': params['model'], 'batch_stats': state.batch_stats}, batch['image'],
          train=True, mutable=['batch_stats'], rngs={'dropout': dropout_rng})
      loss, metrics = corner_loss(config.corners, out, batch)
      return loss, (new_model_state['batch_stats'], metrics)

    (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep_if = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = train.TrainState(
        step=state.step + 1, params=keep_if(optax.apply_updates(state.params, updates), state.params),
        batch_stats=keep_if(batch_stats, state.batch_stats),
        opt_state=keep_if(opt_state, state.opt_state),
        nonfinite_steps=state.nonfinite_steps + (1 - finite.astype(jnp.int32)))
    return new_state, dict(metrics, loss=loss, grad_norm=grad_norm, learning_rate=lr_fn(state.step))

  return train_step


# ---------------------------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------------------------

def make_predict_fn(model, mesh):
  """(variables, uint8 images [B, S, S, 3]) -> {'corners', 'presence'}, batch split over the mesh."""
  batch_sharding = NamedSharding(mesh, P(train.BATCH_AXES))

  @functools.partial(jax.jit, in_shardings=(NamedSharding(mesh, P()), batch_sharding))
  def predict(variables, images):
    out = model.apply(variables, images, train=False)
    return {'corners': out['peak_corners'], 'presence': out['presence']}

  return predict


def predict_all(predict, variables, images, batch_size):
  """Runs `predict` over images [N, ...] in fixed-size batches (the last one padded)."""
  outs = []
  for i in range(0, len(images), batch_size):
    chunk = images[i:i + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
    outs.append(jax.device_get(predict(variables, chunk)))
  return {k: np.concatenate([o[k] for o in outs])[:len(images)] for k in outs[0]}


def score_quads(pred, true, widths, heights):
  """Mean corner error (% of the document diagonal) and share of quad IoU >= 0.9, with corners
  [N, 4, 2] in [0, 1] measured in the unstretched frame (widths x heights)."""
  scale = np.stack([widths, heights], -1)[:, None, :]
  p, t = pred * scale, true * scale
  errors = [quads.corner_error_pct(a, b) for a, b in zip(p, t)]
  ious = [quads.quad_iou(a, b, resolution=256) for a, b in zip(p, t)]
  return {'corner_err_pct': float(np.mean(errors)), 'median_corner_err_pct': float(np.median(errors)),
          'iou_ge_0.9': float(np.mean(np.asarray(ious) >= 0.9)), 'mean_iou': float(np.mean(ious))}


def evaluate_heldout(predict, variables, heldout, batch_size):
  out = predict_all(predict, variables, heldout['image'], batch_size)
  present = heldout['present'] > 0.5
  figures = score_quads(out['corners'][present], heldout['corners'][present],
                        np.ones(present.sum()), heldout['aspect'][present])
  figures['presence_acc'] = float(np.mean((out['presence'] > 0) == present))
  return figures


# ---------------------------------------------------------------------------------------------
# Loop.
# ---------------------------------------------------------------------------------------------

def train_and_evaluate(config, workdir):
  """Trains, evaluates and checkpoints the detector; resumes from the latest checkpoint."""
  validate_config(config)
  validate_corner_config(config)
  with contextlib.ExitStack() as cleanup:
    if jax.process_index() == 0:
      cleanup.enter_context(workdir_lib.lock(workdir))
    return _train_and_evaluate(config, workdir, cleanup)


# The model fields that shape the detector's variables: a release is only a starting point for a
# config that builds the same network (frozen_features and pretrained are training choices).
ARCHITECTURE_FIELDS = ('backbone', 'width', 'feature_taps', 'head_channels')


def init_from_release(config, variables):
  """The detector's variables replaced by a release's (tools/release_detector.py), to fine-tune
  it: same architecture and input size, or a one-line ConfigError saying which field differs."""
  path = config.corners.init_from
  model_config, released, image_size, _ = release_io.read_release(
      path, corners_lib.build_detector, 'detector release')
  for field in ARCHITECTURE_FIELDS:
    want, have = config.model.get(field), model_config.get(field)
    if isinstance(want, (tuple, list)):
      want, have = list(want), list(have or ())
    if want != have:
      raise ConfigError(f'config.corners.init_from={path!r}: the release has model.{field}='
                        f'{have!r}, this config {want!r}')
  if image_size != config.data.image_size:
    raise ConfigError(f'config.corners.init_from={path!r}: the release was trained at '
                      f'{image_size} px, this config at config.data.image_size='
                      f'{config.data.image_size}')
  return jax.tree.map(lambda t, r: np.asarray(r, dtype=t.dtype), variables, released)


def _train_and_evaluate(config, workdir, cleanup):
  mesh = train.create_mesh(config)
  model = corners_lib.build_detector(config.model)
  lr_fn = train.create_learning_rate_fn(config)
  tx = train.create_optimizer(config, lr_fn)
  if jax.process_index() == 0:
    workdir_lib.clean_orbax_temps(os.path.join(os.path.abspath(workdir), 'checkpoints'))
  start_step = train.latest_checkpoint_step(workdir)
  make_input = lambda step: corner_data.train_iterator(
      config, step, jax.process_index(), jax.process_count())
  train_iter = make_input(start_step)
  heldout = corner_data.heldout_set(config)

  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  init_fn = functools.partial(init_state, config, model, tx)
  shardings = train.state_shardings(jax.eval_shape(init_fn, init_rng), config, mesh)
  state = jax.jit(init_fn, out_shardings=shardings)(init_rng)
  if not start_step and (config.corners.init_from or config.model.pretrained):
    variables = {'params': state.params['model'], 'batch_stats': state.batch_stats}
    if config.corners.init_from:
      variables = init_from_release(config, variables)
      logging.info('Detector initialised from the release %s', config.corners.init_from)
    else:
      variables = corners_lib.init_from_imagenet(variables, config.model.pretrained)
      logging.info('Trunk initialised from %s', config.model.pretrained)
    state = train.put_from_host(state.replace(params={'model': variables['params']},
                                              batch_stats=variables['batch_stats']), shardings)
  if jax.process_index() == 0:
    workdir_lib.check_free_space(workdir, workdir_lib.state_bytes(state) + 2**20)
  manager = train.create_checkpoint_manager(config, workdir)
  cleanup.callback(manager.close)
  restored_step, state = train.restore_latest(manager, state, shardings)
  if restored_step != start_step:
    logging.warning('Resuming from step %d instead of %d (see above)', restored_step, start_step)
    start_step = restored_step
    train_iter = make_input(start_step)
  if start_step:
    logging.info('Resumed from checkpoint at step %d', start_step)
  if jax.process_index() == 0:
    train.write_config(config, workdir)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  cleanup.callback(writer.close)
  writer.write_hparams({'num_params': sum(x.size for x in jax.tree.leaves(state.params))})

  batch_sharding = NamedSharding(mesh, P(train.BATCH_AXES))
  replicated = NamedSharding(mesh, P())
  train_step = jax.jit(make_train_step(config, model, tx, lr_fn),
                       in_shardings=(shardings, batch_sharding, replicated),
                       out_shardings=(shardings, replicated), donate_argnums=(0,))
  predict = make_predict_fn(model, mesh)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.num_train_steps, writer=writer, every_steps=config.log_every_steps)
  last_log_time, last_log_step, history = time.time(), start_step, []

  for step in range(start_step + 1, config.num_train_steps + 1):
    batch = next(train_iter)
    batch = train.global_batch({k: v for k, v in batch.items() if k != 'aspect'}, batch_sharding)
    state, metrics = train_step(state, batch, step_rng)
    history.append(metrics)
    report_progress(step)

    if step % config.log_every_steps == 0 or step == config.num_train_steps:
      if int(jax.device_get(state.nonfinite_steps)):
        raise RunStopped(f'loss or gradient became NaN/Inf (at or before step {step}); last good '
                         f'checkpoint: step {manager.latest_step()} in {workdir}')
      got = jax.device_get(history)
      summary = {f'train/{k}': float(np.mean([m[k] for m in got])) for k in got[0]}
      now = time.time()
      summary['train/images_per_sec'] = (step - last_log_step) * config.batch_size / (now - last_log_time)
      writer.write_scalars(step, summary)
      last_log_time, last_log_step, history = now, step, []

    if step % config.eval_every_steps == 0 or step == config.num_train_steps:
      with report_progress.timed('eval'):
        variables = {'params': state.params['model'], 'batch_stats': state.batch_stats}
        figures = evaluate_heldout(predict, variables, heldout, config.eval_batch_size)
        writer.write_scalars(step, {f'eval/heldout/{k}': v for k, v in figures.items()})
      last_log_time = time.time()

    if step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
      with report_progress.timed('checkpoint'), train.stop_if_disk_full(manager, step):
        manager.save(step, args=ocp.args.StandardSave(state))

  with train.stop_if_disk_full(manager, config.num_train_steps):
    manager.wait_until_finished()
  manager.close()
  writer.flush()
  return state
