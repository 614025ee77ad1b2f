"""Prints the scalars of a workdir's TensorBoard event files: python -m tools.read_scalars WORKDIR [TAG...]

Used by the tests and to quote figures from a run without starting TensorBoard.
"""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util


def read_scalars(workdir):
  """{tag: [(step, value), ...]} from every event file directly in workdir (local or gs://)."""
  import file_io  # pylint: disable=import-outside-toplevel
  out = {}
  if not file_io.isdir(workdir):
    return out
  names = [n for n in file_io.listdir(workdir) if n.startswith('events.out.tfevents.')]
  for path in [file_io.join(workdir, n) for n in names]:
    acc = event_accumulator.EventAccumulator(path, size_guidance={'tensors': 0, 'scalars': 0})
    acc.Reload()
    for tag in acc.Tags()['tensors']:
      for e in acc.Tensors(tag):
        value = tensor_util.make_ndarray(e.tensor_proto)
        if value.size == 1:
          out.setdefault(tag, []).append((e.step, float(value)))
    for tag in acc.Tags()['scalars']:
      out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
  return {k: sorted(v) for k, v in out.items()}


def main(argv):
  if len(argv) < 2:
    sys.exit('usage: python -m tools.read_scalars WORKDIR [TAG...]')
  scalars = read_scalars(argv[1])
  for tag in argv[2:] or sorted(scalars):
    print(json.dumps({'tag': tag, 'values': scalars.get(tag, [])}))


if __name__ == '__main__':
  main(sys.argv)
