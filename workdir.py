"""What guards a training workdir: one trainer at a time, free space, and checkpoint faults.

- `lock(workdir)`: an fcntl lock on `workdir/trainer.lock`, which names the holder's host and pid.
  A second trainer stops with one line naming them. The kernel drops the lock when its holder
  dies, so a lock file left by a killed run is stale: it is reported and taken over. On exit the
  file is removed, and a workdir the run created and left empty (a start that failed) goes too.
- `clean_orbax_temps`: a save cut short (disk full, kill) leaves `<step>.orbax-checkpoint-tmp*`
  folders that would make the next save of that step fail; they are removed at start.
- `restore_newest_intact`: a checkpoint whose arrays do not fit the config is a config change
  (stop, say so); one that cannot be read is corrupt: moved to `workdir/corrupt_checkpoints/`,
  said in the log, and the next older step is tried.
- `check_free_space` / `is_disk_full`: refuse to start, or stop in one line, when a checkpoint
  cannot be written; the last good checkpoint is never touched.
- `check_classes` / `write_classes`: `classes.json` keeps the class list (label <-> class, per
  source) the checkpoints were trained with; a resume whose data maps labels otherwise stops in
  one line (LabelsChanged) instead of training on silently relabelled data.
The workdir may be local or `gs://...`: every path goes through file_io (there is no fcntl lock
on an object store, and it does not fill up).
"""
import contextlib
import errno
import fcntl
import json
import logging as py_logging
import os
import shutil
import socket
import time

from absl import logging
import jax
import orbax.checkpoint as ocp

from errors import LabelsChanged, RunStopped, WorkdirLocked
import file_io

LOCK_NAME = 'trainer.lock'
CORRUPT_DIR = 'corrupt_checkpoints'
ORBAX_TMP = '.orbax-checkpoint-tmp'
# Written by every finished orbax save of train.py's StandardSave (step folder, item 'default').
REQUIRED_FILES = ('_CHECKPOINT_METADATA', 'default/_METADATA', 'default/manifest.ocdbt')
COMMIT_FILE = 'commit_success.txt'  # orbax's "save finished" mark on GCS (no atomic rename there)


# ---- one trainer per workdir ----
is_remote = file_io.is_remote


def _pid_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _holder_text(fd):
  os.lseek(fd, 0, os.SEEK_SET)
  return os.read(fd, 500).decode('utf-8', 'replace').strip()


def _acquire(path):
  """(fd, previous holder text) with the lock held on the file now at `path`."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder_text(fd)
      os.close(fd)
      raise WorkdirLocked(_busy_message(path, holder)) from None
    # The previous holder removes the file before unlocking: if we locked a file that was just
    # removed, another trainer may lock the new one; start over on the file now there.
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      return fd, _holder_text(fd)
    os.close(fd)


def _busy_message(path, holder):
  try:
    info = json.loads(holder)
  except ValueError:
    info = {}
  who = f'host {info.get("host", "?")} pid {info.get("pid", "?")}'
  if info.get('started'):
    who += f', started {info["started"]}'
  msg = f'{os.path.dirname(path)} is in use by another trainer ({who}; lock {path})'
  if info.get('host') == socket.gethostname() and isinstance(info.get('pid'), int) and \
      not _pid_alive(info['pid']):
    # flock is held by an open file, so a child process that outlived the trainer keeps it.
    return (msg + ': that pid has exited but a process it started still holds the lock; stop it '
            f'(fuser {path}) and run again')
  return msg + ': wait for it to finish or stop it; two trainers would save every step twice'


@contextlib.contextmanager
def lock(workdir):
  """Held for the whole run; see the module docstring."""
  if is_remote(workdir):  # gs://...: no fcntl there; the pod's process 0 is the only writer
    logging.warning('%s is not a local path: no trainer lock (one trainer per workdir is up '
                    'to you)', workdir)
    yield
    return
  created = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_NAME)
  fd, previous = _acquire(path)
  if previous:
    logging.warning('Stale lock %s (%s) left by a trainer that did not exit cleanly: taken over',
                    path, previous)
  holder = {'host': socket.gethostname(), 'pid': os.getpid(),
            'started': time.strftime('%Y-%m-%d %H:%M:%S %Z')}
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, (json.dumps(holder) + '\n').encode())
  try:
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(path)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    if created:
      with contextlib.suppress(OSError):  # only if empty: a start that failed leaves nothing
        os.rmdir(workdir)


# ---- checkpoint folder faults ----
def clean_orbax_temps(checkpoint_dir):
  """Removes the temp folders of saves that never finished (we hold the workdir lock). On GCS
  orbax writes into the step folder itself and marks it done with commit_success.txt last, so
  there an unfinished save is a step folder without that file."""
  if not file_io.isdir(checkpoint_dir):
    return
  for name in file_io.listdir(checkpoint_dir):
    unfinished = ORBAX_TMP in name or (
        file_io.is_remote(checkpoint_dir) and name.isdigit() and
        not file_io.exists(file_io.join(checkpoint_dir, name, COMMIT_FILE)))
    if unfinished:
      file_io.rmtree(file_io.join(checkpoint_dir, name))
      logging.warning('Removed %s/%s, left by a checkpoint save that did not finish',
                      checkpoint_dir, name)


def _arrays_of(tree):
  """{'params/model/...': shape}: the stored metadata is nested dicts where the state has
  dataclass fields and named tuples, so keys are compared by name, not by key type."""
  name = lambda path: '/'.join(
      str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)
  return {name(path): tuple(getattr(leaf, 'shape', ()))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_step(step_dir, abstract):
  """None if the step looks whole and fits `abstract`; 'corrupt: ...' or 'mismatch: ...'."""
  for rel in REQUIRED_FILES:
    p = file_io.join(step_dir, rel)
    if not file_io.isfile(p) or not file_io.getsize(p):
      return f'corrupt: {rel} is missing or empty'
  try:
    meta = ocp.StandardCheckpointer().metadata(file_io.join(step_dir, 'default'))
    stored = _arrays_of(getattr(meta, 'item_metadata', meta))
  except Exception as e:  # pylint: disable=broad-except  (orbax/json/tensorstore types vary)
    return f'corrupt: unreadable metadata ({type(e).__name__}: {str(e).splitlines()[0][:120]})'
  wanted = _arrays_of(abstract)
  if not any(shape for shape in stored.values()):  # the array metadata itself did not read back
    return f'corrupt: its array metadata is unreadable ({len(stored)} entries, no shapes)'
  if set(stored) != set(wanted):
    diff = sorted(set(stored) ^ set(wanted))
    return f'mismatch: {len(diff)} arrays differ in name (e.g. {diff[0]})'
  for name, shape in wanted.items():
    if stored[name] != shape:
      return f'mismatch: {name} is {list(stored[name])} in the checkpoint, {list(shape)} here'
  return None


@contextlib.contextmanager
def quiet_asyncio():
  # A failed tensorstore read logs every pending task's full spec at ERROR (thousands of lines).
  logger = py_logging.getLogger('asyncio')
  level = logger.level
  logger.setLevel(py_logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


def _move_aside(checkpoint_dir, step):
  dest_root = file_io.join(os.path.dirname(checkpoint_dir.rstrip('/')), CORRUPT_DIR)
  file_io.makedirs(dest_root)
  dest = file_io.join(dest_root, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
  file_io.move(file_io.join(checkpoint_dir, str(step)), dest)
  return dest


def restore_newest_intact(manager, abstract):
  """(step, state) of the newest checkpoint that reads back whole, or (0, None) when there is
  none. Corrupt steps are moved aside (said in the log); a config change stops the run."""
  directory = str(manager.directory)
  for step in sorted(manager.all_steps(), reverse=True):
    problem = _check_step(file_io.join(directory, str(step)), abstract)
    if problem and problem.startswith('mismatch'):
      raise RunStopped(f'checkpoint at step {step} in {directory} does not fit this config (model '
                       f'or number of classes changed?): {problem[10:]}. Use a new --workdir, '
                       'or the config this workdir was trained with (its config.json).')
    if not problem:
      try:
        with quiet_asyncio():
          return step, manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # pylint: disable=broad-except  (tensorstore raises bare Exception)
        problem = f'corrupt: {type(e).__name__}: {str(e).splitlines()[0][:160]}'
    dest = _move_aside(directory, step)
    manager.reload()  # it listed the step we moved: it would refuse to save that step again
    logging.warning('Checkpoint at step %d in %s is %s. Moved to %s; trying the next older step.',
                    step, directory, problem, dest)
  return 0, None


# ---- the class list the checkpoints were trained with ----
CLASSES_NAME = 'classes.json'


def _class_list_change(stored, current):
  """None if both lists map every label to the same class, else what differs (one line)."""
  src = lambda lst: [r['source'] for r in lst]
  if src(stored) != src(current):
    return f'sources were {src(stored)}, now {src(current)}'
  for old, new in zip(stored, current):
    where = f"source {new['source']!r}"
    if old['num_classes'] != new['num_classes']:
      detail = ''
      if old.get('names') and new.get('names'):
        added = sorted(set(new['names']) - set(old['names']))
        removed = sorted(set(old['names']) - set(new['names']))
        detail = f' (added: {added[:3]}{"..." if len(added) > 3 else ""}; removed: ' \
                 f'{removed[:3]}{"..." if len(removed) > 3 else ""})'
      return f"{where} had {old['num_classes']} classes, now {new['num_classes']}{detail}"
    if old.get('names') and new.get('names') and old['names'] != new['names']:
      k = next(i for i, (a, b) in enumerate(zip(old['names'], new['names'])) if a != b)
      return f"{where}: label {old['first_label'] + k} was {old['names'][k]!r}, now {new['names'][k]!r}"
  return None


def check_classes(workdir, classes, step):
  """At a resume (step > 0): LabelsChanged unless `classes` (train_data's records) maps labels as
  the stored classes.json does. A workdir from before the class list was kept is not checked."""
  path = file_io.join(workdir, CLASSES_NAME)
  if not step or not file_io.exists(path):
    return
  stored = file_io.read_json(path, 'class list').get('sources', [])
  change = _class_list_change(stored, classes)
  if change:
    raise LabelsChanged(
        f'the training data maps labels differently from the checkpoint at step {step} '
        f'({path}): {change}. Resuming would train it on relabelled classes; restore the data '
        'as it was, or train in a new --workdir.')


def write_classes(workdir, classes):
  file_io.write_json_atomic(file_io.join(workdir, CLASSES_NAME), {'sources': classes})


# ---- disk space ----
def state_bytes(state):
  return sum(int(getattr(x, 'nbytes', 0)) for x in jax.tree.leaves(state))


def check_free_space(folder, need_bytes):
  if is_remote(folder):  # object stores do not fill up
    return
  free = shutil.disk_usage(folder).free
  if free < need_bytes:
    raise RunStopped(f'{folder}: {free / 2**20:.1f} MiB free, but a checkpoint of this model '
                     f'needs at least {need_bytes / 2**20:.1f} MiB; free some space (nothing was '
                     'written)')


def is_disk_full(error):
  """True for a full disk, however orbax/tensorstore wrap it (a ValueError with
  RESOURCE_EXHAUSTED, or an OSError with ENOSPC somewhere in the chain)."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if 'No space left on device' in str(error) or 'RESOURCE_EXHAUSTED' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False
