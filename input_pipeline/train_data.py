"""Training input: builds the configured sources and yields this host's share of each global batch.

Batches are a pure function of (seed, step): example indices for step s on process p are
s * global_batch + p * local_batch + [0, local_batch). Resuming at step s therefore continues the
exact stream an uninterrupted run would have seen.
"""
import tensorflow as tf

from input_pipeline import synthetic

SOURCES = ('synthetic',)


def _synthetic_dataset(config, first_index, local_batch, global_batch):
  syn = config.data.synthetic
  docs = synthetic.SyntheticDocuments(synthetic.train_templates(syn), syn.seed,
                                      syn.template_size, config.data.image_size)
  steps = tf.data.Dataset.range(first_index // global_batch, 2**62)
  offset = first_index % global_batch
  ds = steps.flat_map(lambda s: tf.data.Dataset.range(
      s * global_batch + offset, s * global_batch + offset + local_batch))
  ds = ds.map(docs.example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds, docs.num_classes


def create_train_iterator(config, *, start_step, process_index=0, process_count=1):
  """(iterator of numpy batches {'image': uint8 [b, H, W, 3], 'label': int32 [b]}, num_classes)."""
  global_batch = config.batch_size
  local_batch = global_batch // process_count
  sources = tuple(config.data.sources)
  unknown = [s for s in sources if s not in SOURCES]
  if unknown:
    raise ValueError(f'config.data.sources: {unknown} not built yet (available: {SOURCES})')
  first_index = start_step * global_batch + process_index * local_batch
  ds, num_classes = _synthetic_dataset(config, first_index, local_batch, global_batch)
  ds = ds.batch(local_batch, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = config.data.get('threads', 0) or 0
  ds = ds.with_options(options).prefetch(config.data.prefetch)
  return ds.as_numpy_iterator(), num_classes
