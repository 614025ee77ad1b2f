"""Timing helpers shared by the benchmarks: interleaved rounds, medians, JSON lines.

The machine is shared and noisy, so candidates are timed round-robin (A B C A B C ...) rather
than one after the other: a burst of load from another process then hits every candidate
alike, and the medians and the ratios between them stay comparable.
"""
import json
import os
import statistics
import sys
import time

# glibc hands every allocation over 32 MiB straight to mmap and unmaps it on free, so each
# training step page-faults its big activation buffers back in (~8k faults per 32 MiB on this
# VM; an elementwise op on 64x32x32x128 f32 drops from ~31 ms to ~9 ms without them). These
# keep freed memory in the heap, on transparent huge pages. Read by glibc at process start.
MALLOC_TUNABLES = ('glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4294967296:'
                   'glibc.malloc.trim_threshold=4294967296')


def reexec_with_malloc_tunables(enabled):
  """Restarts this script with MALLOC_TUNABLES set (no-op when already set or disabled)."""
  if not enabled or os.environ.get('GLIBC_TUNABLES'):
    return
  os.environ['GLIBC_TUNABLES'] = MALLOC_TUNABLES
  os.execv(sys.executable, [sys.executable] + sys.argv)


def interleaved_times(candidates, rounds, warmup=1):
  """Times each zero-argument callable `rounds` times, round-robin, after `warmup` calls.

  Each callable must block until its work is done. Returns {name: {'wall_ms': [...],
  'cpu_ms': [...]}}; cpu_ms is process CPU time (all threads), less sensitive to other
  processes than wall time.
  """
  for fn in candidates.values():
    for _ in range(warmup):
      fn()
  times = {name: {'wall_ms': [], 'cpu_ms': []} for name in candidates}
  for _ in range(rounds):
    for name, fn in candidates.items():
      w0, c0 = time.perf_counter(), time.process_time()
      fn()
      times[name]['wall_ms'].append((time.perf_counter() - w0) * 1e3)
      times[name]['cpu_ms'].append((time.process_time() - c0) * 1e3)
  return times


def summary(samples):
  """Median, min and max of one candidate's samples, rounded for printing."""
  return {'wall_ms_median': round(statistics.median(samples['wall_ms']), 2),
          'wall_ms_min': round(min(samples['wall_ms']), 2),
          'wall_ms_max': round(max(samples['wall_ms']), 2),
          'cpu_ms_median': round(statistics.median(samples['cpu_ms']), 2),
          'runs': len(samples['wall_ms'])}


def environment():
  """What the numbers depend on besides the code."""
  return {'cores': os.cpu_count(), 'load_avg_1m': round(os.getloadavg()[0], 2),
          'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
          'xla_flags': os.environ.get('XLA_FLAGS', '')}


def emit(record):
  print(json.dumps(record), flush=True)
