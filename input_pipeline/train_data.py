"""Training input: builds the configured sources and yields this host's share of each global batch.

Batches are a pure function of (seed, step): every source is an index-addressed stream per
process and input_pipeline/mixing.py gives each source a fixed quota of every batch, so resuming at
step s continues the exact stream an uninterrupted run would have seen.
"""
from absl import logging
import tensorflow as tf

from input_pipeline import augment
from input_pipeline import folders
from input_pipeline import imagenet
from input_pipeline import mixing
from input_pipeline import pdf
from input_pipeline import rendered
from input_pipeline import synthetic

SOURCES = ('synthetic', 'paperwork', 'imagenet_per_image', 'folder', 'pdf')
# Sources of issue 4; each make_source(source_config, ...) returns (stream, num_classes).
_FILE_SOURCES = {'imagenet_per_image': imagenet, 'folder': folders, 'pdf': pdf}


def _capture_indices(start_index, process_index, local_batch, global_batch):
  """Element e of this process is capture (e // local) * global + process * local + e % local:
  unique over processes, and with one generated source the processes' batches are exactly the
  slices of the single-process global batch."""
  return tf.data.Dataset.range(start_index, 2**62).map(
      lambda e: e // local_batch * global_batch + process_index * local_batch + e % local_batch)


def _synthetic_dataset(config, start_index, process_index, local_batch, global_batch):
  """This process's stream of synthetic captures, from element start_index on."""
  syn = config.data.synthetic
  docs = synthetic.SyntheticDocuments(synthetic.train_templates(syn), syn.seed,
                                      syn.template_size, config.data.image_size,
                                      syn.capture_strength)
  ds = _capture_indices(start_index, process_index, local_batch, global_batch)
  # Distillation (issue 5) adds 'teacher_image', the un-augmented view; see below.
  example = _synthetic_teacher_view(docs, config) if needs_teacher_view(config) else docs.example
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds, docs.num_classes


def _paperwork_dataset(config, start_index, process_index, local_batch, global_batch):
  """This process's stream of rendered-paperwork captures, from element start_index on."""
  pw = config.data.paperwork
  docs = rendered.RenderedDocuments(rendered.train_templates(pw), pw, config.data.image_size)
  if docs.failures:
    logging.warning('paperwork: %d templates skipped (could not be laid out)', len(docs.failures))
  ds = _capture_indices(start_index, process_index, local_batch, global_batch)
  size = teacher_view_size(config)
  ds = ds.map(lambda index: docs.example(index, teacher_size=size),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds, docs.num_classes, docs.template_ids  # the templates that rendered, in label order


# ---- distillation (issue 5): 'teacher_image', the un-augmented view at the teacher's size ----
# Every source adds it (synthetic: the clean template; paperwork: the clean page; folder, pdf,
# imagenet: the decoded image un-augmented), so the teacher sees each source's clean view and a
# mix of sources gives the same keys. Precomputed features ('teacher_features') exist for the
# synthetic source only: configs/validate.py refuses a cache with any other source.

def needs_teacher_view(config):
  distill = config.get('distill', {})
  return bool(distill.get('enabled', False)) and not distill.get('teacher_on_augmented', False)


def teacher_view_size(config):
  """Side of the 'teacher_image' the non-synthetic sources add; 0: none (no distillation, or
  the teacher on the augmented image)."""
  return int(config.distill.get('image_size', 224)) if needs_teacher_view(config) else 0


def _synthetic_teacher_view(docs, config):
  """Adds 'teacher_image': the clean template the capture was made from, resized (as the seed's
  teacher saw the un-augmented document). Redraws SyntheticDocuments.example's (label, variant)
  from the same stateless seeds; the assert catches it if that function ever draws differently.
  """
  size = int(config.distill.get('image_size', 224))
  cache = None
  if config.distill.get('cache', ''):  # precomputed features (tools/precompute_teacher.py)
    from models import teacher as teacher_lib  # pylint: disable=import-outside-toplevel
    feats = teacher_lib.load_feature_cache(config.distill.cache)['features']
    if len(feats) != docs.num_classes * synthetic.NUM_VARIANTS:
      raise ValueError(f'config.distill.cache={config.distill.cache}: {len(feats)} images, this '
                       f'config has {docs.num_classes * synthetic.NUM_VARIANTS}; recompute it')
    cache = tf.constant(feats)

  def add_view(index, ex):
    seed = tf.stack([tf.constant(docs.seed, tf.int64), tf.cast(index, tf.int64)])
    s = tf.random.experimental.stateless_split(seed, 3)
    label = tf.random.stateless_uniform((), s[0], 0, docs.num_classes, dtype=tf.int32)
    variant = tf.random.stateless_uniform((), s[1], 0, synthetic.NUM_VARIANTS, dtype=tf.int32)
    with tf.control_dependencies([tf.debugging.assert_equal(label, ex['label'])]):
      template = docs._images[label, variant]  # pylint: disable=protected-access
    if cache is not None:  # image id = label * NUM_VARIANTS + variant, as the cache is written
      return dict(ex, teacher_features=cache[label * synthetic.NUM_VARIANTS + variant])
    return dict(ex, teacher_image=augment.resize_only(template, size))

  return lambda index: add_view(index, docs.example(index))


def create_train_iterator(config, *, start_step, process_index=0, process_count=1, classes=None):
  """(iterator of numpy batches {'image': uint8 [b, H, W, 3], 'label': int32 [b]}, num_classes).

  With distillation the batches also hold 'teacher_image' (each source's clean view, see above)
  or, with config.distill.cache, 'teacher_features'.

  classes: a list that, when given, receives one record per source, in label order: {'source',
  'first_label', 'num_classes', 'names'} where names (class k of the source -> a key that names
  it: template id, folder key) is given where the source knows it and None otherwise. train.py
  keeps it with the checkpoints and refuses a resume whose data would map labels differently.
  """
  global_batch = config.batch_size
  local_batch = global_batch // process_count
  sources = tuple(config.data.sources)
  unknown = [s for s in sources if s not in SOURCES]
  if unknown:
    raise ValueError(f'config.data.sources: {unknown} not built yet (available: {SOURCES})')
  # Each source is a per-process stream; mixing gives source s a fixed quota of every batch,
  # so where each stream resumes is known from start_step alone (see input_pipeline/mixing.py).
  starts = mixing.consumed_before(config.data.weights, local_batch, start_step)
  streams, class_counts, names = [], [], []
  for name, start in zip(sources, starts):
    source_names = []
    if name == 'synthetic':
      ds, n = _synthetic_dataset(config, start, process_index, local_batch, global_batch)
      source_names = [f'template {int(t)}' for t in synthetic.train_templates(config.data.synthetic)]
    elif name == 'paperwork':
      ds, n, template_ids = _paperwork_dataset(config, start, process_index, local_batch,
                                               global_batch)
      source_names = [f'template {int(t)}' for t in template_ids]
    else:
      kwargs = {'classes': source_names} if name in ('folder', 'pdf') else {}
      ds, n = _FILE_SOURCES[name].make_source(
          config.data[name], image_size=config.data.image_size, seed=config.seed,
          process_index=process_index, process_count=process_count, start_index=start,
          augment_config=config.data.augment, teacher_size=teacher_view_size(config), **kwargs)
    streams.append(ds)
    class_counts.append(n)
    names.append(source_names or None)
  if classes is not None:
    first = 0
    for name, n, source_names in zip(sources, class_counts, names):
      classes.append({'source': name, 'first_label': first, 'num_classes': int(n),
                      'names': source_names})
      first += int(n)
  ds, num_classes = mixing.mix(streams, class_counts, config.data.weights,
                               local_batch=local_batch, start_step=start_step, seed=config.seed)
  ds = ds.batch(local_batch, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = config.data.get('threads', 0) or 0
  ds = ds.with_options(options).prefetch(config.data.prefetch)
  return ds.as_numpy_iterator(), num_classes
