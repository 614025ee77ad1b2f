"""Mixing several training sources with weights into one stream, labels in disjoint ranges.

Source s gets labels [offset_s, offset_s + num_classes_s); the head sees sum(num_classes).

Why a deterministic quota instead of `tf.data.Dataset.sample_from_datasets`: random sampling
makes how many examples each source has given before step t a random variable, so a resumed run
would have to replay the whole choice sequence to know where every source stands. Here source s
(all but the largest) has given exactly floor(t * B * q_s / Q) examples before step t (B: local
batch, q_s / Q: its weight as an exact fraction) and the largest source the rest. Each batch
therefore holds round-ish weight * B examples of each source (fractional shares accumulate
exactly across steps), shuffled within the batch by a stateless seed of (seed, step); a
resumed run starts every source at `consumed_before(..., start_step)` in O(1).
"""
import numpy as np
import tensorflow as tf

from input_pipeline import image_io

_Q = 1 << 20  # weight resolution: weights are rounded to multiples of 2^-20


def quantise_weights(weights, local_batch):
  """Weights -> integer shares q_s summing to _Q, checked so that every step's counts are >= 0."""
  w = np.asarray(weights, np.float64)
  if w.ndim != 1 or len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
    raise image_io.DataError(f'data.weights={tuple(weights)}: need one positive weight per source')
  w = w / w.sum()
  q = np.round(w * _Q).astype(np.int64)
  largest = int(np.argmax(w))
  q[largest] += _Q - q.sum()
  # The largest source absorbs the other sources' rounding (< 1 example each per step).
  if local_batch * q[largest] < (len(w) - 1) * _Q:
    raise image_io.DataError(
        f'{len(w)} sources in a local batch of {local_batch}: raise the batch size or merge '
        'sources (the largest weight times the local batch must be >= number of sources - 1)')
  return q, largest


def consumed_before(weights, local_batch, step):
  """Examples each source has given to this process before `step` (python ints)."""
  q, largest = quantise_weights(weights, local_batch)
  total = int(step) * local_batch
  counts = [total * int(qs) // _Q for qs in q]
  counts[largest] = total - sum(c for s, c in enumerate(counts) if s != largest)
  return counts


def _step_choices(q, largest, local_batch, seed):
  """step (int64 tensor) -> int64 [local_batch] source ids of that step's examples, shuffled."""
  q_t = tf.constant(q, tf.int64)
  not_largest = tf.constant(np.arange(len(q)) != largest)

  def cumulative(step):
    c = step * local_batch * q_t // _Q
    others = tf.reduce_sum(tf.where(not_largest, c, 0))
    return tf.where(not_largest, c, step * local_batch - others)

  def choices(step):
    counts = cumulative(step + 1) - cumulative(step)
    ids = tf.repeat(tf.range(len(q), dtype=tf.int64), counts)
    ids = tf.random.experimental.stateless_shuffle(
        ids, tf.stack([tf.constant(seed, tf.int64), step]))
    return tf.data.Dataset.from_tensor_slices(tf.ensure_shape(ids, [local_batch]))

  return choices


def label_offsets(num_classes):
  """Start of each source's label range, and the total number of classes."""
  offsets = np.concatenate([[0], np.cumsum(num_classes)]).astype(np.int64)
  return [int(o) for o in offsets[:-1]], int(offsets[-1])


def mix(datasets, num_classes, weights, *, local_batch, start_step, seed):
  """Interleaves per-source example streams (each started at consumed_before(...)[s]).

  Returns (unbatched dataset, total num_classes); batch it by local_batch with
  drop_remainder=True and batch k is exactly step start_step + k. Keys that only some sources
  give (e.g. 'original_label') are filled with -1 elsewhere.
  """
  if not (len(datasets) == len(num_classes) == len(weights)):
    raise image_io.DataError(f'{len(datasets)} sources but {len(weights)} weights')
  offsets, total = label_offsets(num_classes)
  if total >= 2**31:
    raise image_io.DataError(f'{total} classes do not fit int32 labels')
  keys = sorted({k for ds in datasets for k in ds.element_spec})
  for k in keys:
    specs = [ds.element_spec[k] for ds in datasets if k in ds.element_spec]
    if len(specs) < len(datasets) and any(sp.shape.rank != 0 for sp in specs):
      raise image_io.DataError(f"sources give {k!r} {specs[0].shape} only in part of the mix; "
                               'only scalar keys can be filled in (with -1) for the others')

  def relabel(offset):
    def fn(ex):
      out = {k: ex.get(k, tf.constant(-1, tf.int32)) for k in keys if k != 'image'}
      out['label'] = ex['label'] + offset
      out['image'] = ex['image']
      return out
    return fn

  datasets = [ds.map(relabel(o)) for ds, o in zip(datasets, offsets)]
  if len(datasets) == 1:
    return datasets[0], total
  q, largest = quantise_weights(weights, local_batch)
  choice = tf.data.Dataset.range(int(start_step), 2**62).flat_map(
      _step_choices(q, largest, local_batch, seed))
  return tf.data.Dataset.choose_from_datasets(datasets, choice), total
