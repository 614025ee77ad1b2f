"""Entry point: python main.py --config=configs/arcface_clip.py:demo --workdir=/tmp/demo"""
import os
import sys

import cpu_malloc

# Before anything else is imported: glibc's malloc setting for XLA on the CPU (cpu_malloc.py says
# why, and why not on a TPU or GPU).
if __name__ == '__main__':
  cpu_malloc.relaunch_with_tunables()

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tensorflow as tf

from configs.validate import validate_config
from errors import ConfigError, DataError, RunStopped
import train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, config.json and TensorBoard logs.')
config_flags.DEFINE_config_file('config', None, 'A configs/*.py file, optionally :arg.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def is_multihost():
  """Several processes: a Cloud TPU VM pod slice, or an explicit coordinator address."""
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    return True
  return ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')


def last_line(error):
  """The line that says what is wrong: config_flags puts a whole traceback into its messages."""
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  return lines[-1] if lines else type(error).__name__


def parse_flags(argv):
  """absl's parser, but a config file that does not load or an override of a field the config
  lacks is one line, not a traceback."""
  config_arg = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), '?')
  try:
    remaining = FLAGS(argv)
    FLAGS.config.keys()  # a config file that does not load only fails when first read
    return remaining
  except flags.Error as e:
    if 'Traceback' in str(e) or 'Error whilst parsing config file' in str(e):
      sys.exit(f'Config error: {config_arg}: {last_line(e)}')
    sys.exit(f'FATAL Flags parsing error: {e}')
  except OSError as e:  # config_flags: the config file could not be loaded
    sys.exit(f'Config error: cannot load {config_arg}: {last_line(e)}')
  except (AttributeError, KeyError) as e:
    overrides = [a.split('=')[0] for a in argv if a.startswith('--config.')]
    sys.exit(f'Config error: no such config field {str(e).strip(chr(34) + chr(39))!r} '
             f'(overrides given: {", ".join(overrides)})')


def quiet_orbax_info(record):
  # Orbax logs every save in detail at INFO; keep its warnings, drop the rest from the console.
  return '/orbax/' not in record.pathname or record.levelno >= logging.WARNING


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  logging.get_absl_handler().addFilter(quiet_orbax_info)
  # tf.data only: keep TensorFlow off the accelerators JAX uses.
  tf.config.set_visible_devices([], 'GPU')
  if is_multihost():
    # On a Cloud TPU slice jax finds the processes itself; elsewhere (several processes on one
    # machine, a plain cluster) JAX_COORDINATOR_ADDRESS plus these two say who is who.
    env = {k: int(os.environ[v]) for k, v in (('num_processes', 'JAX_NUM_PROCESSES'),
                                              ('process_id', 'JAX_PROCESS_ID')) if v in os.environ}
    jax.distributed.initialize(**env)
  logging.info('JAX process %d / %d, devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  try:
    validate_config(FLAGS.config)
  except ConfigError as e:
    sys.exit(f'Config error: {e}')
  try:
    if FLAGS.config.get('task', 'embed') == 'corners':  # issue 15: the corner detector
      import train_corners  # pylint: disable=import-outside-toplevel
      train_corners.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.config.get('task', 'embed') == 'uncertainty':  # issue 14: the PFE head
      import train_uncertainty  # pylint: disable=import-outside-toplevel
      train_uncertainty.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except ConfigError as e:
    sys.exit(f'Config error: {e}')
  except RunStopped as e:
    sys.exit(f'Stopped: {e}')
  except DataError as e:
    sys.exit(f'Data error: {e}')
  except OSError as e:  # e.g. the workdir is not writable, or the disk filled at start
    sys.exit(f'Stopped: {e.filename or FLAGS.workdir}: {e.strerror or e}')


if __name__ == '__main__':
  jax.config.config_with_absl()
  app.run(main, flags_parser=parse_flags)
