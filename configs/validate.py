"""Checks a config before anything compiles: each problem is one line naming the field."""
import jax
import numpy as np

from errors import ConfigError
from models.layers import CONV_IMPLS, IMPLS


def resolve_mesh_shape(config, num_devices):
  """(data, model) with -1 resolved; ConfigError if it does not tile the devices."""
  data, model = int(config.mesh.data), int(config.mesh.model)
  if data == 0 or model == 0 or data < -1 or model < -1 or (data == -1 and model == -1):
    raise ConfigError(f'config.mesh: data={data}, model={model}: use positive sizes, at most one -1')
  if data == -1:
    if num_devices % model:
      raise ConfigError(f'config.mesh.model={model} does not divide the {num_devices} devices')
    data = num_devices // model
  if model == -1:
    if num_devices % data:
      raise ConfigError(f'config.mesh.data={data} does not divide the {num_devices} devices')
    model = num_devices // data
  if data * model != num_devices:
    raise ConfigError(f'config.mesh: data={data} x model={model} = {data * model} devices, '
                      f'but {num_devices} are present')
  return data, model


def _choice(config, field, value, choices):
  if value not in choices:
    raise ConfigError(f'config.{field}: {value!r} is not one of {", ".join(map(str, choices))}')


def validate_config(config, num_devices=None, process_count=None):
  """Raises ConfigError on the first problem found."""
  num_devices = num_devices or jax.device_count()
  process_count = process_count or jax.process_count()
  data, model = resolve_mesh_shape(config, num_devices)
  shards = data * model
  if config.batch_size <= 0 or config.batch_size % shards:
    raise ConfigError(f'config.batch_size={config.batch_size} must be a positive multiple of the '
                      f'{shards} devices of the mesh (data={data} x model={model})')
  if config.batch_size % process_count:
    raise ConfigError(f'config.batch_size={config.batch_size} must divide over {process_count} hosts')
  if config.eval_batch_size <= 0 or config.eval_batch_size % shards:
    raise ConfigError(f'config.eval_batch_size={config.eval_batch_size} must be a positive multiple '
                      f'of the {shards} devices')
  _choice(config, 'param_sharding', config.param_sharding, ('replicate', 'fsdp'))
  _choice(config, 'model.backbone', config.model.backbone,
          ('lcnet', 'resnet', 'mobilenet_v2', 'efficientnet_lite0'))
  _choice(config, 'model.head', config.model.head, ('ln_bn', 'ln', 'bn'))
  _choice(config, 'model.depthwise_impl', config.model.depthwise_impl, IMPLS)
  _choice(config, 'model.conv_impl', config.model.conv_impl, CONV_IMPLS)
  _choice(config, 'model.dtype', config.model.dtype, ('float32', 'bfloat16'))
  _choice(config, 'loss.margin', config.loss.margin, ('cosface', 'arcface', 'combined'))
  _choice(config, 'loss.center_update', config.loss.center_update, ('sparse', 'dense'))
  _choice(config, 'optimizer.name', config.optimizer.name, ('adamw',))
  _choice(config, 'optimizer.schedule', config.optimizer.schedule,
          ('cosine', 'polynomial', 'constant'))
  if config.distill.enabled:
    _choice(config, 'distill.loss', config.distill.loss, ('kl', 'cosine', 'kl+cosine'))
    _choice(config, 'distill.dtype', config.distill.dtype, ('float32', 'bfloat16'))
    if not config.distill.temperature > 0 or config.distill.weight < 0:
      raise ConfigError('config.distill: temperature must be > 0 and weight >= 0')
    if not config.distill.teacher and not config.distill.cache:
      raise ConfigError('config.distill.teacher: distillation is enabled but no teacher or cache is set')
    others = [s for s in config.data.sources if s != 'synthetic']
    if config.distill.cache and others:
      # The cache is indexed by the synthetic source's clean images (tools/precompute_teacher.py);
      # the other sources' examples have no entry in it.
      raise ConfigError(f'config.distill.cache: precomputed teacher features exist for the '
                        f'synthetic source only, not {others}; drop the cache (the teacher then '
                        'runs in the step on every source\'s clean view) or those sources')
  if config.model.pretrained and config.model.backbone not in ('mobilenet_v2', 'efficientnet_lite0'):
    raise ConfigError(f'config.model.pretrained: ImageNet weights exist for mobilenet_v2 and '
                      f'efficientnet_lite0, not {config.model.backbone!r}')
  if config.model.embed_dim <= 0:
    raise ConfigError(f'config.model.embed_dim={config.model.embed_dim} must be positive')
  if config.data.image_size < 32:
    raise ConfigError(f'config.data.image_size={config.data.image_size}: at least 32 px')
  if not config.loss.scale > 0:
    raise ConfigError(f'config.loss.scale={config.loss.scale} must be positive')
  if not 0.0 <= config.data.synthetic.capture_strength <= 1.0:
    raise ConfigError(f'config.data.synthetic.capture_strength='
                      f'{config.data.synthetic.capture_strength} must be in [0, 1]')
  if not 0.0 < config.loss.sample_rate <= 1.0:
    raise ConfigError(f'config.loss.sample_rate={config.loss.sample_rate} must be in (0, 1]')
  if config.loss.margin in ('arcface', 'combined') and not 0 <= config.loss.m2 < np.pi / 2:
    raise ConfigError(f'config.loss.m2={config.loss.m2} must be in [0, pi/2)')
  if config.num_train_steps <= 0:
    raise ConfigError(f'config.num_train_steps={config.num_train_steps} must be positive')
  if not 0 <= config.optimizer.warmup_steps <= config.num_train_steps:
    raise ConfigError(f'config.optimizer.warmup_steps={config.optimizer.warmup_steps} must be in '
                      f'[0, num_train_steps={config.num_train_steps}]')
  if not config.optimizer.learning_rate > 0:
    raise ConfigError(f'config.optimizer.learning_rate={config.optimizer.learning_rate} must be > 0')
  for field in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    if config[field] <= 0:
      raise ConfigError(f'config.{field}={config[field]} must be positive')
  if config.get('max_nonfinite_steps', 0) < 0:
    raise ConfigError(f'config.max_nonfinite_steps={config.max_nonfinite_steps} must be >= 0')
  if len(config.data.sources) != len(config.data.weights):
    raise ConfigError(f'config.data.weights: {len(config.data.weights)} weights for '
                      f'{len(config.data.sources)} sources')
  for name in config.eval_sets:
    if name not in ('synthetic_heldout', 'paperwork_heldout') and not name.startswith('folder:'):
      raise ConfigError(f'config.eval_sets: {name!r} is none of synthetic_heldout, '
                        'paperwork_heldout, folder:<dir>')
  _choice(config, 'eval_missing_folders', config.get('eval_missing_folders', 'error'),
          ('error', 'skip'))
  pw = config.data.paperwork
  if not 0.0 <= pw.capture_strength <= 1.0:
    raise ConfigError(f'config.data.paperwork.capture_strength={pw.capture_strength} must be in [0, 1]')
  if pw.num_templates < 2 or pw.copies < 1 or pw.template_size < 32:
    raise ConfigError('config.data.paperwork: need num_templates >= 2, copies >= 1, '
                      'template_size >= 32')
