"""Captures turned by 90 / 180 / 270 degrees against registries with and without turned entries.

  python benchmarks/turned_captures.py --data ../shared/data/us_forms
  python benchmarks/turned_captures.py --data ../shared/data/midv_photos --rectify
      # MIDV: frames turned, then detected and flattened; the refer/ templates registered

Each query photo is turned (counter-clockwise, before anything else: a scan fed upside down, a
phone held sideways) and embedded as `inference.cli classify` would (with --rectify: the corner
detector finds and flattens the page in the turned photo). The register images are entered as
`register --turns T` enters them: upright, plus turned by each of T. Per (query turn, registry
turns), one JSON line: top-1 (the nearest entry's type is the query's) and the 99th percentile
of each query's best score over the *other* types' entries (turned entries are more chances
for an impostor too: that is their price). Labels and roles come from labels.csv.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import numpy as np  # pylint: disable=g-import-not-at-top

from inference import images as images_lib  # pylint: disable=g-import-not-at-top
from inference import released  # pylint: disable=g-import-not-at-top
from inference.registry import Registry  # pylint: disable=g-import-not-at-top


def turned_transform(turn, then=None):
  """rgb -> (rgb turned by `turn` degrees counter-clockwise, then `then`'s result)."""
  def transform(rgb):
    rgb = np.ascontiguousarray(np.rot90(rgb, turn // 90))
    return then(rgb) if then else (rgb, None)
  return transform


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--data', required=True, help='folder with labels.csv (file,label,role)')
  p.add_argument('--checkpoint', default=released.DEFAULT_DIR)
  p.add_argument('--rectify', action='store_true', help='detect and flatten each query photo')
  p.add_argument('--detector', default='')
  p.add_argument('--detector_zoom', type=float, default=None,
                 help="the detector's zoomed pass, as the CLI's --detector-zoom (default: "
                      "inference/detector.py DEFAULT_ZOOM; 0: one pass + refine_quad)")
  p.add_argument('--query_turns', default='0,90,180,270')
  p.add_argument('--registry_turns', default=';180;90,180,270',
                 help="';'-separated registry settings, each a comma list ('' = upright only)")
  args = p.parse_args(argv)
  from inference.model import load_model  # pylint: disable=import-outside-toplevel
  model = load_model(args.checkpoint)
  rectifier = None
  if args.rectify:
    from inference import detector as detector_lib  # pylint: disable=import-outside-toplevel
    from inference import rectify  # pylint: disable=import-outside-toplevel
    zoom = detector_lib.DEFAULT_ZOOM if args.detector_zoom is None else args.detector_zoom
    rectifier = rectify.rectifier(detector_lib.load_detector(args.detector),
                                  square=rectify.model_square(model.preprocessing), zoom=zoom)
  rows = images_lib.read_labels_csv(args.data)
  reg_items = [(label, path) for path, label, role in rows if role == 'register']
  query_items = [(label, path) for path, label, role in rows if role != 'register']
  # Registered images are clean templates or scans: upright and whole, as `register` takes them.
  reg_loaded = images_lib.load_images([p for _, p in reg_items], model.preprocessing)
  reg_labels = np.array([label for label, _ in reg_items], dtype=object)
  q_labels = np.array([label for label, _ in query_items], dtype=object)
  settings = [[int(t) for t in s.split(',') if t] for s in args.registry_turns.split(';')]
  for q_turn in [int(t) for t in args.query_turns.split(',')]:
    loaded = images_lib.load_images([p for _, p in query_items], model.preprocessing,
                                    transform=turned_transform(q_turn, rectifier))
    q_emb = model.embed(loaded.images)
    rectified = sum(1 for i in loaded.infos if i and i.get('rectified'))
    for turns in settings:
      reg = Registry.for_model(model)
      reg.set_register_turns(turns)
      for label in dict.fromkeys(reg_labels):  # Registry.add enters each image at every turn
        reg.add(label, reg_loaded.images[reg_labels == label])
      answers = reg.classify_embeddings(q_emb)
      top1 = float(np.mean([a['nearest'] == l for a, l in zip(answers, q_labels)]))
      e_labels = np.array(reg.labels, dtype=object)
      scores = q_emb @ reg.embeddings.T
      other = np.where(e_labels[None, :] != q_labels[:, None], scores, -np.inf).max(axis=1)
      print(json.dumps({
          'data': os.path.basename(os.path.normpath(args.data)), 'model': model.fingerprint,
          'rectify': bool(args.rectify), 'query_turn': q_turn, 'registry_turns': turns,
          'queries': len(q_labels), 'rectified': rectified, 'entries': len(reg),
          'top1': round(top1, 4),
          'matched_turn_share': round(float(np.mean([a['turn'] == q_turn for a in answers])), 4),
          'best_other_type_p99': round(float(np.percentile(other, 99)), 4)}), flush=True)


if __name__ == '__main__':
  main()
