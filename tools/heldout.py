"""Evaluate a training checkpoint on the synthetic held-out templates, outside training.

  python -m tools.heldout --workdir=/tmp/demo
  python -m tools.heldout --workdir=/tmp/demo --capture_strength=1.0 --heldout_templates=100

Builds the held-out set from the run's own config.json (the options override its
data.synthetic fields, e.g. to score a model on harder captures than it was trained on), embeds
it with the latest checkpoint (or --step) and prints one JSON line: the figures train.py writes
to TensorBoard as eval/synthetic_heldout/*. A command-line script, so it lives in tools/: it
loads the checkpoint through inference/, and evaluation/ (which inference/ uses) stays free of
imports from inference/.
"""
import json
import sys

from absl import app
from absl import flags

flags.DEFINE_string('workdir', None, 'training workdir (config.json + checkpoints/)', required=True)
flags.DEFINE_integer('step', None, 'checkpoint step (default: latest)')
flags.DEFINE_float('capture_strength', None, 'override data.synthetic.capture_strength')
flags.DEFINE_integer('heldout_templates', None, 'override data.synthetic.heldout_templates')
flags.DEFINE_integer('heldout_captures', None, 'override data.synthetic.heldout_captures')
flags.DEFINE_integer('batch_size', 64, 'embedding batch')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from evaluation import evaluators  # pylint: disable=g-import-not-at-top
  from inference import model as model_lib  # pylint: disable=g-import-not-at-top
  from errors import InputError  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  try:
    config = model_lib.read_workdir_config(FLAGS.workdir)
    model = model_lib.load_checkpoint(FLAGS.workdir, FLAGS.step)
  except InputError as e:
    sys.exit(f'Error: {e}')
  syn = config.data.synthetic
  # config.json files from before capture_strength existed were made at full strength.
  syn.capture_strength = syn.get('capture_strength', 1.0)
  for name in ('capture_strength', 'heldout_templates', 'heldout_captures'):
    if getattr(FLAGS, name) is not None:
      syn[name] = getattr(FLAGS, name)
  images, labels, is_register = synthetic.heldout_set(syn, config.data.image_size)
  embeddings = model.embed(images, batch_size=FLAGS.batch_size)
  figures = evaluators.evaluate_embeddings(embeddings, labels, is_register)
  print(json.dumps(dict(checkpoint=model.source, **{
      k: syn[k] for k in ('capture_strength', 'heldout_templates', 'heldout_captures')},
                        **{k: round(v, 4) for k, v in figures.items()})))


if __name__ == '__main__':
  app.run(main)
