"""Registry search time: 10, 1k, 100k and 1M entries, numpy matrix product vs faiss flat index.

  python benchmarks/registry_search.py                      # dim 256, one core
  python benchmarks/registry_search.py --sizes=1000,1000000 --rounds=9 --threads=2

One JSON line per (entries, backend, batch): median ms per query over interleaved rounds
(benchmarks/timing.py), ratio to numpy, and whether the backend's top-5 equals the exact
product's (faiss_fp16 stores entries in half precision and may reorder near-ties).
Pinned to `--threads` cores (the 10 ms / 50 ms targets are for one core).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--sizes', default='10,1000,100000,1000000')
  p.add_argument('--dim', type=int, default=256)
  p.add_argument('--batches', default='1,64', help='queries per search call')
  p.add_argument('--backends', default='numpy,faiss,faiss_fp16')
  p.add_argument('--rounds', type=int, default=7)
  p.add_argument('--threads', type=int, default=1)
  return p.parse_args()


def main():
  args = parse_args()
  for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ[var] = str(args.threads)  # before numpy / faiss load their thread pools
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.threads]))
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import timing  # pylint: disable=g-import-not-at-top
  from inference.search import EntryIndex, have_faiss, l2_normalize  # pylint: disable=g-import-not-at-top
  backends = [b for b in args.backends.split(',') if b == 'numpy' or have_faiss()]
  rng = np.random.default_rng(0)
  queries = l2_normalize(rng.standard_normal((64, args.dim), np.float32))
  for n in map(int, args.sizes.split(',')):
    entries = l2_normalize(rng.standard_normal((n, args.dim), np.float32))
    indexes = {b: EntryIndex(entries, b) for b in backends}
    exact = indexes['numpy'].search(queries, min(5, n))[1] if 'numpy' in indexes else None
    for batch in map(int, args.batches.split(',')):
      q = queries[:batch]
      cands = {b: (lambda idx=idx: idx.search(q, 5)) for b, idx in indexes.items()}
      times = timing.interleaved_times(cands, args.rounds)
      base = timing.summary(times['numpy'])['wall_ms_median'] if 'numpy' in times else None
      for b in backends:
        s = timing.summary(times[b])
        per_query = s['wall_ms_median'] / batch
        same = (None if exact is None else
                bool((indexes[b].search(q, min(5, n))[1] == exact[:batch]).all()))
        timing.emit({'bench': 'registry_search', 'entries': n, 'dim': args.dim, 'backend': b,
                     'batch': batch, 'ms_per_query_median': round(per_query, 4), **s,
                     'ratio_to_numpy': round(s['wall_ms_median'] / base, 3) if base else None,
                     'top5_equals_exact': same, 'threads': args.threads,
                     **timing.environment()})
    del indexes, entries


if __name__ == '__main__':
  main()
