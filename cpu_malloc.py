"""glibc's malloc setting for XLA on the CPU, applied by re-launching the process (main.py and the
benchmarks call `relaunch_with_tunables` before anything else is imported).

CPU speed (issue 7): glibc by default unmaps every freed buffer over 32 MiB, so each training step
page-faults its large activation buffers back in (~8k faults per 32 MiB on this VM; an elementwise
op on 64x32x32x128 f32 drops from ~31 ms to ~9 ms without them). MALLOC_TUNABLES keeps freed
memory in the heap, on transparent huge pages; `python benchmarks/train_step_speed.py
--default_malloc` times the step without it. glibc reads GLIBC_TUNABLES only at start-up, hence
the re-launch. The cost: freed memory is kept until the process exits.

Only where XLA runs on the CPU: on a TPU or GPU the step's buffers live in device memory, and what
the host still does (tf.data decoding, rendering, the in-graph capture ops) gains nothing:
`python benchmarks/input_pipeline.py --sources=paperwork --no_trainer [--default_malloc]` gave
172.9 / 177.4 images/s with the setting and 224.9 / 179.5 without, alternated on the 2-core
machine. There the re-launch would only add a start and keep host memory.
"""
import os
import sys

MALLOC_TUNABLES = ('glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4294967296:'
                   'glibc.malloc.trim_threshold=4294967296')


def accelerator_expected(environ=os.environ, exists=os.path.exists, listdir=os.listdir):
  """Whether JAX will pick a TPU or GPU, judged before importing it (importing would claim the
  device): JAX_PLATFORMS, or the device files of a TPU VM (/dev/accel*, /dev/vfio/<n>) or an
  NVIDIA driver (/dev/nvidiactl)."""
  platforms = environ.get('JAX_PLATFORMS', '').strip().lower()
  if platforms:
    return platforms.split(',')[0] != 'cpu'
  dev = listdir('/dev') if exists('/dev') else []
  vfio = listdir('/dev/vfio') if exists('/dev/vfio') else []
  return (any(n.startswith('accel') for n in dev) or any(n.isdigit() for n in vfio)
          or exists('/dev/nvidiactl'))


def relaunch_with_tunables(enabled=True, cpu_only=True):
  """Re-executes this process with MALLOC_TUNABLES set; no-op when disabled, already set,
  DOCEMBED_DEFAULT_MALLOC is set, or (cpu_only) an accelerator is expected."""
  if (not enabled or 'GLIBC_TUNABLES' in os.environ or os.environ.get('DOCEMBED_DEFAULT_MALLOC')
      or (cpu_only and accelerator_expected())):
    return
  os.environ['GLIBC_TUNABLES'] = MALLOC_TUNABLES
  os.execv(sys.executable, [sys.executable] + sys.argv)
