"""Frozen teachers for feature distillation: CLIP's vision tower, or any frozen Flax extractor.

A `Teacher` is a pure function plus its parameters: `teacher_features(teacher, params, images)`
runs inside the jitted, sharded train step (batch over 'data', parameters replicated), so the
teacher costs one forward per step and never appears in the optimizer or the gradients.

    teacher = load_teacher(config.distill)      # once, on the host
    feats = teacher_features(teacher, teacher.params, batch['teacher_image'])   # in the step

`config.distill.teacher` picks the source:
  'openai/clip-vit-base-patch32' or a local directory   CLIP (FlaxCLIPModel / FlaxCLIPVisionModel
                                                        via `from_pretrained`; PyTorch safetensors
                                                        through from_pt)
  'mobilenet_v2:<weights>', 'efficientnet_lite0:<weights>'   an ImageNet CNN, mean-pooled features;
                                                        <weights> is a converted .msgpack, a .pth, or
                                                        a weight package (models/pretrained.py)
"""
import dataclasses
import io
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import file_io

# CLIP's preprocessing (openai/CLIP, transformers' OPENAI_CLIP_MEAN/STD), on the [0, 1] scale.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CNN_TEACHERS = ('mobilenet_v2', 'efficientnet_lite0')


@dataclasses.dataclass(frozen=True, eq=False)
class Teacher:
  """A frozen feature extractor. `apply(params, x)` maps normalised NHWC images to [B, D]."""
  name: str
  apply: Callable[[Any, jnp.ndarray], jnp.ndarray]
  params: Any
  image_size: int
  mean: tuple
  std: tuple
  feature_dim: int
  dtype: Any = jnp.float32


def teacher_features(teacher, params, images):
  """uint8 (or float in [0, 255]) NHWC images -> float32 features [B, D], without gradients.

  Images at another size than the teacher's (e.g. the student's augmented view when
  config.distill.teacher_on_augmented) are resized to it first.
  """
  x = images.astype(jnp.float32)
  size = teacher.image_size
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), 'bilinear', antialias=True)
  x = (x / 255.0 - jnp.asarray(teacher.mean)) / jnp.asarray(teacher.std)
  feats = teacher.apply(jax.lax.stop_gradient(params), x.astype(teacher.dtype))
  return jax.lax.stop_gradient(feats.astype(jnp.float32))


def _cast_floats(params, dtype):
  return jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p,
                      params)


def flax_module_teacher(module, variables, *, image_size, mean, std, name, dtype=jnp.float32):
  """Any frozen Flax module as a teacher: `module.apply(variables, x)` -> [B, D], or a feature
  map [B, h, w, D] which is mean-pooled (the usual pooled features of a CNN)."""
  dtype = jnp.dtype(dtype)

  def apply(params, x):
    out = module.apply(params, x)
    return out.mean(axis=(1, 2)) if out.ndim == 4 else out

  probe = jax.eval_shape(apply, variables, jnp.zeros((1, image_size, image_size, 3), dtype))
  return Teacher(name=name, apply=apply, params=_cast_floats(variables, dtype),
                 image_size=int(image_size), mean=tuple(mean), std=tuple(std),
                 feature_dim=int(probe.shape[-1]), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# CLIP.
# ---------------------------------------------------------------------------------------------

def _has_file(src, *names):
  return os.path.isdir(src) and any(os.path.exists(os.path.join(src, n)) for n in names)


def _saved_by_pytorch(src):
  """from_pt='auto': whether a local folder holds PyTorch weights and no Flax ones.

  Flax's save_pretrained(safe_serialization=True) writes model.safetensors too, marked
  format 'flax' in its metadata; read as PyTorch it still loads, but only after the conversion's
  random init of the whole model (measured on a tiny CLIP, 2 cores: 26 s instead of 0.2 s).
  """
  if not os.path.isdir(src) or _has_file(src, 'flax_model.msgpack'):
    return False
  path = os.path.join(src, 'model.safetensors')
  if os.path.exists(path):
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    with safe_open(path, framework='np') as f:
      return (f.metadata() or {}).get('format', 'pt') == 'pt'
  return _has_file(src, 'pytorch_model.bin')


def _clip_norm(src):
  """image_mean/std from a local preprocessor_config.json, else CLIP's published constants."""
  path = os.path.join(src, 'preprocessor_config.json')
  if os.path.isfile(path):
    with open(path) as f:
      pre = json.load(f)
    return tuple(pre.get('image_mean', CLIP_MEAN)), tuple(pre.get('image_std', CLIP_STD))
  return CLIP_MEAN, CLIP_STD


def load_clip_teacher(src, *, projected=True, from_pt='auto', dtype='float32'):
  """CLIP's image tower from a hub name or a local directory.

  projected=True gives `get_image_features` (pooled CLS -> visual_projection, the embedding CLIP
  aligns with text); a directory holding only a CLIPVisionConfig gives the pooled CLS features.
  from_pt='auto' converts PyTorch weights (model.safetensors marked 'pt' / pytorch_model.bin)
  when a local directory has no Flax weights (flax_model.msgpack, or model.safetensors written by
  a Flax model's save_pretrained). Parameters are kept in `dtype` (bfloat16 halves memory).
  """
  import transformers  # pylint: disable=import-outside-toplevel
  dtype = jnp.dtype(dtype)
  if from_pt == 'auto':
    from_pt = _saved_by_pytorch(src)
  try:
    config = transformers.AutoConfig.from_pretrained(src)
  except (OSError, ValueError) as e:
    raise ValueError(f'CLIP teacher {src!r}: cannot load its config ({str(e).splitlines()[0]})'
                     ) from None
  full = config.model_type == 'clip'
  if config.model_type not in ('clip', 'clip_vision_model'):
    raise ValueError(f'teacher {src!r} is a {config.model_type!r} model, not CLIP')
  cls = transformers.FlaxCLIPModel if full else transformers.FlaxCLIPVisionModel
  if from_pt:  # transformers' PyTorch->Flax conversion needs an initialised model
    model = cls.from_pretrained(src, from_pt=True, dtype=dtype)
    all_params = model.params
  else:  # _do_init=False: no throw-away random init of the whole model before the weights load
    model, all_params = cls.from_pretrained(src, dtype=dtype, _do_init=False)
  vision = config.vision_config if full else config
  use_projection = full and projected

  def apply(params, x):  # x: NHWC, as the Flax CLIP modules take it internally
    def forward(module, pixels):
      vision_model = module.vision_model
      pooled = vision_model(pixel_values=pixels, deterministic=True)[1]
      return module.visual_projection(pooled) if use_projection else pooled
    return model.module.apply({'params': params}, x, method=forward)

  # Keep only the image tower (the text tower is never run); logit_scale, a scalar, is created
  # in FlaxCLIPModule.setup and must be present.
  keep = ('vision_model', 'visual_projection', 'logit_scale') if full else ('vision_model',)
  params = {k: v for k, v in all_params.items() if k in keep}
  mean, std = _clip_norm(src)
  return Teacher(name=f'clip:{src}', apply=apply, params=_cast_floats(params, dtype),
                 image_size=int(vision.image_size), mean=mean, std=std,
                 feature_dim=int(config.projection_dim if use_projection else vision.hidden_size),
                 dtype=dtype)


# ---------------------------------------------------------------------------------------------
# ImageNet CNNs (offline teachers: the demo's, where no CLIP weights can be had).
# ---------------------------------------------------------------------------------------------

def load_cnn_teacher(arch, weights, *, image_size=224, dtype='float32'):
  """A converted ImageNet backbone (models/mobilenet_v2.py, models/efficientnet_lite.py)."""
  from models import pretrained as convert  # pylint: disable=import-outside-toplevel
  module = convert.backbone_for_arch(arch)
  template = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, image_size, image_size, 3)))
  if weights.endswith('.msgpack'):
    variables = convert.load_pretrained_variables(weights, template)
  else:  # a .pth or a weight package: convert in memory
    sd = convert.read_torch_state_dict(convert.resolve_weight_source(weights))
    variables = convert.convert_state_dict(arch, sd)
    convert.check_variables(variables, template, weights)
  variables = jax.tree.map(np.asarray, variables)
  return flax_module_teacher(module, variables, image_size=image_size, mean=IMAGENET_MEAN,
                             std=IMAGENET_STD, name=f'{arch}:{weights}', dtype=dtype)


def load_teacher(distill_config):
  """The teacher named by config.distill (see the module docstring)."""
  spec = distill_config.teacher
  dtype = distill_config.get('dtype', 'float32')
  if not spec:
    raise ValueError('config.distill.enabled but config.distill.teacher is empty')
  arch, sep, weights = spec.partition(':')
  if sep and arch in CNN_TEACHERS:
    return load_cnn_teacher(arch, weights, image_size=distill_config.get('image_size', 0) or 224,
                            dtype=dtype)
  return load_clip_teacher(spec, projected=distill_config.get('projected', True),
                           from_pt=distill_config.get('from_pt', 'auto'), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Precomputed feature cache (tools/precompute_teacher.py writes it).
# ---------------------------------------------------------------------------------------------

def load_feature_cache(path):
  """{'features': float32 [N, D] indexed by image id, 'teacher', 'image_size'}; one-line errors."""
  try:
    with np.load(io.BytesIO(file_io.read_bytes(path)), allow_pickle=False) as z:
      cache = {'features': z['features'].astype(np.float32), 'teacher': str(z['teacher']),
               'image_size': int(z['image_size'])}
  except Exception as e:  # pylint: disable=broad-except  (OSError, KeyError, ValueError, tf.errors.*)
    raise ValueError(f'teacher feature cache {path}: unreadable ({e})') from None
  if cache['features'].ndim != 2 or not np.all(np.isfinite(cache['features'])):
    raise ValueError(f'teacher feature cache {path}: features must be a finite [N, D] array')
  return cache
