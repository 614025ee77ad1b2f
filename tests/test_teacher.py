"""Distillation: the frozen teacher (CLIP through the real `from_pretrained`, any Flax module),
the KL / cosine feature losses, and a few sharded train steps in which the distillation loss falls.

The CLIP weights are tiny random ones the tests save themselves (no hub access here), once as a
Flax msgpack and once as PyTorch-format safetensors (loaded with from_pt=True).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import transformers

from losses import distill
from models import teacher as teacher_lib

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              image_size=32, patch_size=8)


@pytest.fixture(scope='module')
def clip_dirs(tmp_path_factory):
  """{'flax': full CLIP as flax_model.msgpack, 'pt': CLIP vision tower as model.safetensors}."""
  root = tmp_path_factory.mktemp('clip')
  text = transformers.CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, vocab_size=64,
                                     max_position_embeddings=8)
  config = transformers.CLIPConfig(text_config=text.to_dict(), vision_config=VISION,
                                   projection_dim=16)
  flax_model = transformers.FlaxCLIPModel(config, seed=0)
  flax_model.save_pretrained(root / 'flax')
  dirs = {'flax': str(root / 'flax'), 'flax_model': flax_model}
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  pt_model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)).eval()
  pt_model.save_pretrained(root / 'pt', safe_serialization=True)
  dirs.update(pt=str(root / 'pt'), pt_model=pt_model)
  return dirs


def _pixels(n=4, size=32, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3)).astype(np.uint8)


def _clip_normalised_nchw(images):
  x = (images / 255.0 - np.asarray(teacher_lib.CLIP_MEAN)) / np.asarray(teacher_lib.CLIP_STD)
  return x.astype(np.float32).transpose(0, 3, 1, 2)


def test_clip_teacher_from_flax_msgpack(clip_dirs):
  teacher = teacher_lib.load_clip_teacher(clip_dirs['flax'])
  assert (teacher.feature_dim, teacher.image_size) == (16, 32)
  assert 'text_model' not in teacher.params  # only the image tower is kept
  images = _pixels()
  got = teacher_lib.teacher_features(teacher, teacher.params, images)
  want = clip_dirs['flax_model'].get_image_features(_clip_normalised_nchw(images))
  np.testing.assert_allclose(got, want, atol=1e-5)

  # bf16 teacher: parameters stored in bf16, same features up to bf16 rounding.
  bf16 = teacher_lib.load_clip_teacher(clip_dirs['flax'], dtype='bfloat16')
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(bf16.params))
  got16 = teacher_lib.teacher_features(bf16, bf16.params, images)
  assert got16.dtype == jnp.float32
  np.testing.assert_allclose(got16, want, atol=0.05 * np.abs(want).max())

  # A student-sized view is resized to the teacher's 32 px rather than rejected.
  assert teacher_lib.teacher_features(teacher, teacher.params, _pixels(size=20)).shape == (4, 16)


def test_clip_teacher_from_pytorch_safetensors(clip_dirs):
  torch = pytest.importorskip('torch')
  teacher = teacher_lib.load_clip_teacher(clip_dirs['pt'])  # from_pt chosen automatically
  assert teacher.feature_dim == 32  # a vision-only config: pooled CLS features
  images = _pixels(seed=1)
  got = teacher_lib.teacher_features(teacher, teacher.params, images)
  with torch.no_grad():
    want = clip_dirs['pt_model'](pixel_values=torch.from_numpy(_clip_normalised_nchw(images)))
  np.testing.assert_allclose(got, want.pooler_output.numpy(), atol=1e-4)


def test_flax_safetensors_load_without_the_pytorch_conversion(clip_dirs, tmp_path):
  """save_pretrained(safe_serialization=True) of a Flax CLIP writes model.safetensors marked
  'flax': from_pt='auto' reads it directly (the conversion path would first run the whole
  model's random init), with the msgpack's features."""
  clip_dirs['flax_model'].save_pretrained(tmp_path, safe_serialization=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['config.json', 'model.safetensors']
  assert not teacher_lib._saved_by_pytorch(str(tmp_path))  # pylint: disable=protected-access
  assert not teacher_lib._saved_by_pytorch(clip_dirs['flax'])  # pylint: disable=protected-access
  if 'pt' in clip_dirs:
    assert teacher_lib._saved_by_pytorch(clip_dirs['pt'])  # pylint: disable=protected-access
  images = _pixels(seed=2)
  got = teacher_lib.load_clip_teacher(str(tmp_path))
  want = teacher_lib.load_clip_teacher(clip_dirs['flax'])
  np.testing.assert_array_equal(teacher_lib.teacher_features(got, got.params, images),
                                teacher_lib.teacher_features(want, want.params, images))


def test_teacher_inputs_that_cannot_work_are_refused(tiny_config):
  """A feature cache covers the synthetic source only: with other sources it is refused at
  start, in one line; a step that would call the teacher without a teacher or without the clean
  view is refused when traced, instead of running on None or on the wrong image."""
  from configs.validate import validate_config  # pylint: disable=import-outside-toplevel
  from errors import ConfigError  # pylint: disable=import-outside-toplevel
  c = tiny_config(**{'data.sources': ('synthetic', 'folder'), 'data.weights': (0.5, 0.5),
                     'distill.enabled': True, 'distill.cache': '/x/cache.npz'})
  with pytest.raises(ConfigError, match=r"synthetic source only, not \['folder'\]"):
    validate_config(c)
  c.data.sources, c.data.weights = ('synthetic',), (1.0,)
  validate_config(c)
  proj = distill.init_projection(jax.random.PRNGKey(0), 8, 4)
  emb = jnp.ones((2, 8))
  batch = {'image': jnp.zeros((2, 16, 16, 3), jnp.uint8)}
  with pytest.raises(ConfigError, match="no 'teacher_features' and no teacher"):
    distill.distill_term(c.distill, None, None, proj, emb, batch)
  module = nn.Dense(4)
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  teacher = teacher_lib.flax_module_teacher(module, variables, image_size=16, mean=(0.5,) * 3,
                                            std=(0.25,) * 3, name='dense')
  with pytest.raises(ConfigError, match="no 'teacher_image'"):
    distill.distill_term(c.distill, teacher, teacher.params, proj, emb, batch)
  c.distill.teacher_on_augmented = True  # the one case that runs the teacher on 'image'
  loss, _ = distill.distill_term(c.distill, teacher, teacher.params, proj, emb, batch)
  assert np.isfinite(float(loss))


def test_bad_teacher_source_is_one_line_error(tmp_path):
  with pytest.raises(ValueError, match='cannot load its config'):
    teacher_lib.load_clip_teacher(str(tmp_path))  # an empty directory
  cfg = ml_collections.ConfigDict({'teacher': '', 'weight': 1.0})
  with pytest.raises(ValueError, match='teacher is empty'):
    teacher_lib.load_teacher(cfg)


def test_flax_module_teacher_is_frozen():
  """Any Flax module can teach; its parameters get no gradient through teacher_features."""
  module = nn.Conv(8, (3, 3))
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  teacher = teacher_lib.flax_module_teacher(module, variables, image_size=16, mean=(0.5,) * 3,
                                            std=(0.25,) * 3, name='conv')
  assert teacher.feature_dim == 8  # the [B, h, w, 8] map is mean-pooled
  images = _pixels(2, 16)
  grads = jax.grad(lambda p: teacher_lib.teacher_features(teacher, p, images).sum())(
      teacher.params)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_distill_losses():
  cfg = ml_collections.ConfigDict({'weight': 2.0, 'loss': 'kl', 'temperature': 0.1})
  rng = np.random.RandomState(0)
  t = jnp.asarray(rng.randn(8, 16), jnp.float32)
  same, m = distill.distill_loss(3.0 * t, t, cfg)  # only directions matter
  assert abs(float(same)) < 1e-6 and abs(float(m['distill_cosine'])) < 1e-6
  s = jnp.asarray(rng.randn(8, 16), jnp.float32)
  loss, m = distill.distill_loss(s, t, cfg)
  assert float(loss) > 0 and np.isclose(float(loss), 2.0 * float(m['distill_kl']))
  cfg.loss = 'cosine'
  loss, m = distill.distill_loss(s, t, cfg)
  assert np.isclose(float(loss), 2.0 * float(m['distill_cosine']))
  # The loss pulls the student toward the teacher and sends nothing back to the teacher.
  g_s, g_t = jax.grad(lambda a, b: distill.distill_loss(a, b, cfg)[0], argnums=(0, 1))(s, t)
  assert float(jnp.abs(g_t).max()) == 0.0 and float(jnp.abs(g_s).max()) > 0.0
  assert float(distill.distill_loss(s - 0.1 * g_s, t, cfg)[0]) < float(loss)
  cfg.loss = 'l2'
  with pytest.raises(ValueError, match='config.distill.loss'):
    distill.distill_loss(s, t, cfg)


def test_training_with_clip_distillation_on_8_devices(clip_dirs, tiny_config):
  """train.py's sharded step with the CLIP teacher loaded from PyTorch safetensors: the frozen
  teacher runs inside the jitted step on the un-augmented view and the distillation loss falls."""
  import train  # pylint: disable=import-outside-toplevel
  from input_pipeline import train_data  # pylint: disable=import-outside-toplevel
  from models.embedder import build_model  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  assert jax.device_count() == 8
  # Steps after the first compile are cheap; 30 at a high rate show a clear fall.
  c = tiny_config(**{'num_train_steps': 30, 'optimizer.learning_rate': 1e-2})
  c.distill.enabled = True
  c.distill.teacher = clip_dirs['pt']
  c.distill.weight = 5.0
  c.distill.image_size = 32   # the tiny CLIP's own resolution
  c.mesh.data, c.mesh.model = 4, 2
  mesh = train.create_mesh(c)
  teacher = teacher_lib.load_teacher(c.distill)
  replicated = NamedSharding(mesh, P())
  teacher_params = jax.device_put(teacher.params, replicated)
  batches, num_classes = train_data.create_train_iterator(c, start_step=0)
  model = build_model(c.model)
  lr_fn = train.create_learning_rate_fn(c)
  tx = train.create_optimizer(c, lr_fn)
  init = lambda rng: train.init_train_state(c, model, tx, rng, num_classes, mesh,
                                            teacher_dim=teacher.feature_dim)
  shardings = train.state_shardings(jax.eval_shape(init, jax.random.PRNGKey(0)), c, mesh)
  state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))
  batch_sharding = NamedSharding(mesh, P(train.BATCH_AXES))
  step = jax.jit(train.make_train_step(c, model, tx, lr_fn, num_classes, teacher=teacher),
                 in_shardings=(shardings, batch_sharding, replicated, replicated),
                 out_shardings=(shardings, replicated))
  kl = []
  for _ in range(c.num_train_steps):
    batch = next(batches)
    assert batch['teacher_image'].shape == (c.batch_size, 32, 32, 3)
    state, metrics = step(state, train.global_batch(batch, batch_sharding), jax.random.PRNGKey(1),
                          teacher_params)
    kl.append(float(metrics['distill_kl']))
  assert np.all(np.isfinite(kl))
  assert np.mean(kl[-5:]) < 0.6 * np.mean(kl[:3]), kl
  assert state.params['distill_proj']['kernel'].shape == (c.model.embed_dim, teacher.feature_dim)
  # The teacher stays outside the trained state: no CLIP parameter is optimised or saved.
  assert set(state.params) == {'model', 'head', 'distill_proj'}


def test_precomputed_feature_cache_matches_the_live_teacher(tiny_config, tmp_path):
  """tools/precompute_teacher.py's cache, read back by the pipeline by image id, gives the
  features the teacher computes live on the same batch's un-augmented views."""
  from input_pipeline import train_data  # pylint: disable=import-outside-toplevel
  from tools import precompute_teacher  # pylint: disable=import-outside-toplevel
  module = nn.Conv(8, (3, 3), strides=(2, 2))
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  teacher = teacher_lib.flax_module_teacher(module, variables, image_size=16, mean=(0.5,) * 3,
                                            std=(0.25,) * 3, name='conv')
  c = tiny_config()
  c.distill.enabled, c.distill.image_size, c.distill.cache = True, 16, ''
  live = next(train_data.create_train_iterator(c, start_step=3)[0])
  want = teacher_lib.teacher_features(teacher, teacher.params, live['teacher_image'])

  feats = precompute_teacher.compute_features(
      teacher, precompute_teacher.synthetic_clean_images(c), 16, batch_size=16)
  path = str(tmp_path / 'cache.npz')
  precompute_teacher.write_cache(path, feats, teacher.name, 16)
  c.distill.cache = path
  cached = next(train_data.create_train_iterator(c, start_step=3)[0])
  assert 'teacher_image' not in cached
  np.testing.assert_array_equal(cached['label'], live['label'])
  np.testing.assert_allclose(cached['teacher_features'], want, rtol=2e-3, atol=2e-3)  # float16

  precompute_teacher.write_cache(path, feats[:-1], teacher.name, 16)
  with pytest.raises(ValueError, match='recompute it'):
    train_data.create_train_iterator(c, start_step=0)
