"""Training input: builds the configured sources and yields this host's share of each global batch.

Batches are a pure function of (seed, step): every source is an index-addressed stream per
process and input_pipeline/mixing.py gives each source a fixed quota of every batch, so resuming at
step s continues the exact stream an uninterrupted run would have seen.
"""
import tensorflow as tf

from input_pipeline import folders
from input_pipeline import imagenet
from input_pipeline import mixing
from input_pipeline import pdf
from input_pipeline import synthetic

SOURCES = ('synthetic', 'imagenet_per_image', 'folder', 'pdf')
# Sources of issue 4; each make_source(source_config, ...) returns (stream, num_classes).
_FILE_SOURCES = {'imagenet_per_image': imagenet, 'folder': folders, 'pdf': pdf}


def _synthetic_dataset(config, start_index, process_index, local_batch, global_batch):
  """This process's stream of captures, from element start_index on.

  Element e is capture (e // local) * global + process * local + e % local: unique over
  processes, and with synthetic as the only source the processes' batches are exactly the
  slices of the single-process global batch.
  """
  syn = config.data.synthetic
  docs = synthetic.SyntheticDocuments(synthetic.train_templates(syn), syn.seed,
                                      syn.template_size, config.data.image_size)
  ds = tf.data.Dataset.range(start_index, 2**62).map(
      lambda e: e // local_batch * global_batch + process_index * local_batch + e % local_batch)
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
  # Each source is a per-process stream; mixing gives source s a fixed quota of every batch,
  # so where each stream resumes is known from start_step alone (see input_pipeline/mixing.py).
  starts = mixing.consumed_before(config.data.weights, local_batch, start_step)
  streams, class_counts = [], []
  for name, start in zip(sources, starts):
    if name == 'synthetic':
      ds, n = _synthetic_dataset(config, start, process_index, local_batch, global_batch)
    else:
      ds, n = _FILE_SOURCES[name].make_source(
          config.data[name], image_size=config.data.image_size, seed=config.seed,
          process_index=process_index, process_count=process_count, start_index=start,
          augment_config=config.data.augment)
    streams.append(ds)
    class_counts.append(n)
  ds, num_classes = mixing.mix(streams, class_counts, config.data.weights,
                               local_batch=local_batch, start_step=start_step, seed=config.seed)
  ds = ds.batch(local_batch, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = config.data.get('threads', 0) or 0
  ds = ds.with_options(options).prefetch(config.data.prefetch)
  return ds.as_numpy_iterator(), num_classes
