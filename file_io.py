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

Local paths only (os, fcntl); imports nothing of the project but errors.py.
"""
import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import tempfile
import time
import zipfile
import zlib

import numpy as np

from errors import CorruptFileError, InputError, RegistryBusy


def real_path(path):
  """The file a path names: a symlink is followed, so writes update its target."""
  return os.path.realpath(path) if os.path.islink(path) else path


def _new_file_mode():
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


def _temp_pattern(target, suffix):
  return re.compile(r'^\.' + re.escape(os.path.basename(target)) + r'\.[A-Za-z0-9_]{8}'
                    + re.escape(suffix) + '$')


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
  folder = os.path.dirname(os.path.abspath(target))
  patterns = {_temp_pattern(target, s) for s in ('.tmp', os.path.splitext(target)[1] or '.tmp')}
  removed = []
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
  killed writer never leaves it stuck."""
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
  if not os.path.isfile(path):
    raise InputError(f'{path}: no such {what}')
  if os.path.getsize(path) == 0:
    raise CorruptFileError(f'{path}: {what} is empty (0 bytes; a write that never finished?)')


def read_json(path, what='JSON file'):
  """The JSON object (dict) in `path`; CorruptFileError naming the file otherwise."""
  _require_file(path, what)
  try:
    with open(path, 'rb') as f:
      obj = json.loads(f.read().decode('utf-8'))
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
    with zipfile.ZipFile(path) as zf:
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
