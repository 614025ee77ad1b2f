"""Feature distillation losses: the student's projected embedding against the teacher's features.

The student embedding [B, E] goes through a linear map without bias (params['distill_proj'],
kernel [E, D_teacher]) and both sides are L2-normalised, so only directions are matched (CLIP's
features live on the sphere; their norms carry no meaning for retrieval).

  'kl'      the seed's loss: KL(softmax(t / T) || softmax(s / T)) over the feature dimensions,
            i.e. the student must reproduce which feature dimensions the teacher activates.
  'cosine'  1 - cos(s, t).
  'kl+cosine'  their sum.
The result is multiplied by config.distill.weight and added to the margin loss.
"""
import jax
import jax.numpy as jnp

from errors import ConfigError
from models import teacher as teacher_lib

LOSSES = ('kl', 'cosine', 'kl+cosine')


def init_projection(rng, embed_dim, teacher_dim):
  """params['distill_proj']: {'kernel': [embed_dim, teacher_dim]}, LeCun-normal like nn.Dense."""
  kernel = jax.nn.initializers.lecun_normal()(rng, (embed_dim, teacher_dim), jnp.float32)
  return {'kernel': kernel}


def project(proj_params, embeddings):
  return embeddings.astype(jnp.float32) @ proj_params['kernel']


def _l2_normalize(x, eps=1e-12):
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def kl_over_features(student, teacher, temperature):
  """Mean over the batch of KL(p_teacher || p_student), softmaxes over the feature dimension."""
  log_p_s = jax.nn.log_softmax(student / temperature, axis=-1)
  log_p_t = jax.nn.log_softmax(teacher / temperature, axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1))


def cosine_distance(student, teacher):
  return jnp.mean(1.0 - jnp.sum(student * teacher, axis=-1))


def distill_loss(projected, teacher_feats, distill_config):
  """(weighted loss, metrics). `projected` is the student's projection [B, D], `teacher_feats` the
  (frozen) teacher features [B, D]; both are L2-normalised here."""
  kind = distill_config.get('loss', 'kl')
  if kind not in LOSSES:
    raise ValueError(f'config.distill.loss: {kind!r} is not one of {LOSSES}')
  s = _l2_normalize(projected.astype(jnp.float32))
  t = _l2_normalize(jax.lax.stop_gradient(teacher_feats).astype(jnp.float32))
  kl = kl_over_features(s, t, distill_config.get('temperature', 0.1))
  cos = cosine_distance(s, t)
  loss = {'kl': kl, 'cosine': cos, 'kl+cosine': kl + cos}[kind]
  weighted = distill_config.weight * loss
  return weighted, {'distill_kl': kl, 'distill_cosine': cos, 'distill_loss': weighted}


def distill_term(distill_config, teacher, teacher_params, proj_params, embeddings, batch):
  """The train step's distillation term: (weighted loss, metrics).

  Teacher features come from: batch['teacher_features'] (the precomputed cache,
  tools/precompute_teacher.py), else the teacher on the student's augmented batch['image']
  (config.distill.teacher_on_augmented), else the teacher on batch['teacher_image'], the clean
  view every source adds (input_pipeline/train_data.py). Anything else is refused when the step
  is traced, in one line, instead of running the teacher on the wrong image (or on None).
  """
  if 'teacher_features' in batch:
    feats = batch['teacher_features']
  else:
    on_augmented = distill_config.get('teacher_on_augmented', False)
    if teacher is None:
      raise ConfigError("distillation: the batch has no 'teacher_features' and no teacher is "
                        'loaded (config.distill.cache covers the synthetic source only)')
    if not on_augmented and 'teacher_image' not in batch:
      raise ConfigError("distillation: the batch has no 'teacher_image' (the clean view the "
                        'input pipeline adds when config.distill.enabled)')
    view = batch['image'] if on_augmented else batch['teacher_image']
    feats = teacher_lib.teacher_features(teacher, teacher_params, view)
  return distill_loss(project(proj_params, embeddings), feats, distill_config)
