"""Writing and reading back the project's own files so that nothing is lost or half-read.

- Atomic writes: a temp file in the same folder, fsync, rename. A crash, a kill or a full disk
  mid-write leaves the old file whole. An existing file keeps its mode; a path that is a symlink
  updates the file it points to (the link stays a link).
- A temp file left by a writer that was killed (`.<name>.XXXXXXXX.tmp`) is removed by
  `clean_stale_temps`, which callers run while they hold the file's lock.
- `locked(path)`: an advisory fcntl lock on `<path>.lock` beside the file, for read-modify-write.
- Loaders (`read_json`, `read_npz`): any failure is one CorruptFileError naming the file and what
  is wrong (empty, truncated, not JSON, an array header that lies about its size), never a
  traceback from zipfile or numpy, and never an allocation of what a garbled header asks for.

Every path the project reads or writes goes through here, local or `gs://` (any `scheme://`):
local paths use os/fcntl as above; remote ones use tf.io.gfile (imported on first use, so the
inference tools do not load TensorFlow for local files). Remote writes are "atomic" the way an
object store allows: the bytes go to a temp object beside the target, which is then renamed
(copied server-side) over it, so a reader sees the old object or the whole new one, and a killed
writer leaves only a `.<name>.XXXXXXXX.tmp` object that `clean_stale_temps` removes. There is no
fsync, no file mode and no lock on an object store (`locked` says so in the log and goes on: one
writer at a time is the caller's promise there). `resolve` gives orbax an absolute local path
or the URL unchanged (never os.path.abspath on `gs://`). Imports nothing of the project but
errors.py.
"""
import contextlib
import errno
import fcntl
import io
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
import zipfile
import zlib

import numpy as np

from errors import CorruptFileError, InputError, RegistryBusy


# ---- paths: local or remote (gs://...) ----

def is_remote(path):
  """True for an object-store URL (gs://bucket/..., or any scheme://)."""
  return '://' in os.fspath(path)


def _gfile():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (remote paths only)
  return tf.io.gfile


def resolve(path):
  """An absolute local path, or a remote URL unchanged (os.path.abspath('gs://b/x') would make
  it '<cwd>/gs:/b/x')."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def join(path, *parts):
  return os.path.join(os.fspath(path), *parts)


def exists(path):
  return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path):
  return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def isfile(path):
  if is_remote(path):
    return _gfile().exists(path) and not _gfile().isdir(path)
  return os.path.isfile(path)


def getsize(path):
  return _gfile().stat(path).length if is_remote(path) else os.path.getsize(path)


def listdir(path):
  """Names in a folder (no trailing '/'), sorted."""
  if is_remote(path):
    return sorted(n.rstrip('/') for n in _gfile().listdir(path))
  return sorted(os.listdir(path))


def makedirs(path):
  if is_remote(path):
    _gfile().makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def remove(path):
  if is_remote(path):
    _gfile().remove(path)
  else:
    os.unlink(path)


def rmtree(path):
  """Removes a folder and everything in it; a missing folder is not an error."""
  if is_remote(path):
    with contextlib.suppress(Exception):  # tf.errors.NotFoundError; nothing to remove
      _gfile().rmtree(path)
  else:
    shutil.rmtree(path, ignore_errors=True)


def move(src, dst):
  """Renames a file or folder (on an object store: copies every object, then deletes)."""
  if is_remote(src) or is_remote(dst):
    _gfile().rename(src, dst, overwrite=False)
  else:
    shutil.move(src, dst)


def walk(root):
  """(folder, sub-folder names, file names) for every folder under root, like os.walk with
  followlinks=True; names sorted, hidden ones (starting with '.') left out."""
  if not is_remote(root):
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
      yield dirpath, dirnames, sorted(f for f in filenames if not f.startswith('.'))
    return
  pending = [root.rstrip('/')]
  while pending:
    folder = pending.pop(0)
    dirnames, filenames = [], []
    for entry in _gfile().listdir(folder):
      name = entry.rstrip('/')
      if not name or name.startswith('.'):
        continue
      (dirnames if entry.endswith('/') or _gfile().isdir(join(folder, name))
       else filenames).append(name)
    dirnames, filenames = sorted(set(dirnames)), sorted(set(filenames))
    yield folder, dirnames, filenames
    pending[:0] = [join(folder, d) for d in dirnames]


def read_bytes(path):
  if is_remote(path):
    with _gfile().GFile(path, 'rb') as f:
      return f.read()
  with open(path, 'rb') as f:
    return f.read()


def open_file(path, mode='rb'):
  """A file object for reading or writing, local or remote (tf.io.gfile.GFile)."""
  return _gfile().GFile(path, mode) if is_remote(path) else open(path, mode)  # pylint: disable=consider-using-with


def free_bytes(folder):
  """Free space where `folder` is (None on an object store, which does not fill up)."""
  return None if is_remote(folder) else shutil.disk_usage(folder).free


def real_path(path):
  """The file a path names: a symlink is followed, so writes update its target."""
  if is_remote(path):
    return os.fspath(path)
  return os.path.realpath(path) if os.path.islink(path) else path


def _new_file_mode():
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


def _temp_pattern(target, suffix):
  return re.compile(r'^\.' + re.escape(os.path.basename(target)) + r'\.[A-Za-z0-9_]{8}'
                    + re.escape(suffix) + '$')


def _remote_temp_name(target, suffix):
  folder, name = target.rsplit('/', 1)
  token = ''.join(secrets.choice('abcdefghijklmnopqrstuvwxyz0123456789') for _ in range(8))
  return f'{folder}/.{name}.{token}{suffix}'


def _atomic_remote(target, suffix, data=None, write_fn=None):
  """The object-store form of _atomic: a temp object beside the target, renamed over it."""
  gfile = _gfile()
  folder = target.rsplit('/', 1)[0]
  if not gfile.exists(folder):
    gfile.makedirs(folder)
  tmp = _remote_temp_name(target, suffix)
  try:
    if write_fn is not None:  # the writer wants a local file name: write there, then upload
      with tempfile.TemporaryDirectory() as local:
        local_tmp = os.path.join(local, os.path.basename(tmp))
        write_fn(local_tmp)
        gfile.copy(local_tmp, tmp, overwrite=True)
    else:
      with gfile.GFile(tmp, 'wb') as f:
        f.write(data)
    gfile.rename(tmp, target, overwrite=True)
  except BaseException:
    with contextlib.suppress(Exception):
      gfile.remove(tmp)
    raise


def _atomic(path, suffix, write_tmp):
  """Runs write_tmp(tmp_path, fd) on a temp file beside `path`, then renames it over `path`."""
  target = real_path(path)
  folder = os.path.dirname(os.path.abspath(target))
  os.makedirs(folder, exist_ok=True)
  mode = os.stat(target).st_mode & 0o7777 if os.path.exists(target) else _new_file_mode()
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(target) + '.',
                             suffix=suffix)
  try:
    os.fchmod(fd, mode)  # mkstemp makes 0600; the file keeps the mode it had (or umask's)
    write_tmp(tmp, fd)
    os.replace(tmp, target)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise
  with contextlib.suppress(OSError):  # the rename itself survives a power cut
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
      os.fsync(dir_fd)
    finally:
      os.close(dir_fd)


def write_bytes_atomic(path, data):
  if is_remote(path):
    _atomic_remote(os.fspath(path), '.tmp', data=bytes(data))
    return

  def write(_, fd):
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
  _atomic(path, '.tmp', write)


def write_json_atomic(path, obj):
  write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode())


def write_with_atomic(path, write_fn):
  """For writers that want a file name (np.save, onnx.save): write to a temp name, then rename.
  The temp name keeps the extension (np.save would otherwise append '.npy')."""
  if is_remote(path):
    _atomic_remote(os.fspath(path), os.path.splitext(path)[1] or '.tmp', write_fn=write_fn)
    return

  def write(tmp, fd):
    os.close(fd)
    write_fn(tmp)
    with open(tmp, 'rb+') as f:
      os.fsync(f.fileno())
  _atomic(path, os.path.splitext(path)[1] or '.tmp', write)


def clean_stale_temps(path):
  """Removes temp files a killed writer of `path` left behind; call while holding locked(path).
  Returns the names removed."""
  target = real_path(path)
  folder = target.rsplit('/', 1)[0] if is_remote(target) else os.path.dirname(
      os.path.abspath(target))
  patterns = {_temp_pattern(target, s) for s in ('.tmp', os.path.splitext(target)[1] or '.tmp')}
  removed = []
  if is_remote(target):
    if _gfile().isdir(folder):
      for name in _gfile().listdir(folder):
        if any(p.match(name) for p in patterns):
          with contextlib.suppress(Exception):  # another cleaner was first
            _gfile().remove(join(folder, name))
            removed.append(name)
    return removed
  with contextlib.suppress(FileNotFoundError):
    for name in os.listdir(folder):
      if any(p.match(name) for p in patterns):
        with contextlib.suppress(FileNotFoundError):
          os.unlink(os.path.join(folder, name))
          removed.append(name)
  return removed


@contextlib.contextmanager
def locked(path, timeout_s=120.0):
  """Exclusive advisory lock on `<path>.lock` (beside the symlink's target) for a read-modify-
  write of `path`. The lock file stays (removing it would let a third process lock a new file
  while a second still holds the old one); the kernel drops the lock when its holder dies, so a
  killed writer never leaves it stuck. An object store has no such lock: there the caller's
  promise of one writer at a time stands in for it (said in the log)."""
  if is_remote(path):
    logging.getLogger(__name__).warning(
        '%s is not a local path: no lock (one writer at a time is up to you)', path)
    yield
    return
  lock_path = real_path(path) + '.lock'
  os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
  fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, _new_file_mode())
  try:
    deadline = time.monotonic() + timeout_s
    while True:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        if time.monotonic() > deadline:
          raise RegistryBusy(f'{path}: another process has held {lock_path} for over '
                             f'{timeout_s:.0f} s; try again when it has finished') from None
        time.sleep(0.05)
    try:
      os.ftruncate(fd, 0)
      os.write(fd, f'{socket.gethostname()} {os.getpid()}\n'.encode())  # who, for a person
      yield
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


def _require_file(path, what):
  if not isfile(path):
    raise InputError(f'{path}: no such {what}')
  if getsize(path) == 0:
    raise CorruptFileError(f'{path}: {what} is empty (0 bytes; a write that never finished?)')


def read_json(path, what='JSON file'):
  """The JSON object (dict) in `path`; CorruptFileError naming the file otherwise."""
  _require_file(path, what)
  try:
    obj = json.loads(read_bytes(path).decode('utf-8'))
  except UnicodeDecodeError:
    raise CorruptFileError(f'{path}: {what} is not UTF-8 text') from None
  except json.JSONDecodeError as e:
    raise CorruptFileError(f'{path}: {what} is not valid JSON ({e}); truncated or '
                           'hand-edited?') from None
  if not isinstance(obj, dict):
    raise CorruptFileError(f'{path}: {what} holds a {type(obj).__name__}, not a JSON object')
  return obj


def _read_npy_member(zf, name, path, what):
  """One array of an .npz, its header checked against its size before anything is allocated."""
  info = zf.getinfo(name + '.npy')
  with zf.open(info) as f:
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
      raise CorruptFileError(f'{path}: {what} array {name!r}: unknown .npy version {version}')
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(f)
    if dtype.hasobject:
      raise CorruptFileError(f'{path}: {what} array {name!r} holds Python objects (refused: '
                             'loading them could run code)')
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    stored = info.file_size - f.tell()
    if expected != stored:
      raise CorruptFileError(f'{path}: {what} array {name!r} header says {dtype} {list(shape)} '
                             f'({expected} bytes) but {stored} bytes are stored')
    data = f.read(stored)
  arr = np.frombuffer(data, dtype).reshape(shape, order='F' if fortran else 'C')
  return np.array(arr)  # writable, owned


def read_npz(path, names, what='.npz file', optional=()):
  """{name: array} for each of `names` (and of the `optional` names the file holds) in the .npz
  at `path` (no pickles); CorruptFileError naming the file for an empty, truncated, garbled or
  incomplete file."""
  _require_file(path, what)
  try:
    with zipfile.ZipFile(io.BytesIO(read_bytes(path)) if is_remote(path) else path) as zf:
      present = {n[:-4] for n in zf.namelist() if n.endswith('.npy')}
      missing = [n for n in names if n not in present]
      if missing:
        raise CorruptFileError(f'{path}: {what} lacks {", ".join(missing)} '
                               f'(holds: {", ".join(sorted(present)) or "nothing"})')
      return {n: _read_npy_member(zf, n, path, what)
              for n in list(names) + [o for o in optional if o in present]}
  except (zipfile.BadZipFile, zlib.error, EOFError) as e:
    raise CorruptFileError(f'{path}: not a {what} or a damaged one (truncated? '
                           f'{str(e) or type(e).__name__})') from None
  except InputError:
    raise
  except (ValueError, OSError) as e:
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EISDIR):
      raise InputError(f'{path}: cannot read {what} ({e.strerror})') from None
    raise CorruptFileError(f'{path}: not a {what} or a damaged one ({type(e).__name__}: '
                           f'{str(e).splitlines()[0] if str(e) else ""})') from None
