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

def reexec_with_malloc_tunables(enabled):
  """Restarts this script with cpu_malloc.MALLOC_TUNABLES set (no-op when already set or
  disabled); on any backend, so a benchmark measures what its flag says."""
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
  import cpu_malloc  # pylint: disable=import-outside-toplevel
  cpu_malloc.relaunch_with_tunables(enabled, cpu_only=False)


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
