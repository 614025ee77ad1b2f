r"""The corner detector on pages that are flat already: scans, PDF renders, registered templates (issue 15).

    python benchmarks/corners_flat.py --detector=released/corners-v3
    python benchmarks/corners_flat.py --detector=workdirs/corners7 \
        --sets=../shared/data/us_forms,../shared/data/midv_photos:register

A scan or a clean template fills its frame edge to edge: what rectification should leave as it
is. A detector that has seen only pages smaller than the frame outlines a part of such a page
instead (a text block, a table), and the warp then cuts the page. For each image of each set
(DIR/labels.csv; `DIR:ROLE` takes only the rows of that role, e.g. midv_photos' clean templates),
the detector (zoom and shape prior as the CLI's defaults, or --zoom / --shape_prior) is run and
its quad compared with the whole frame: the share of images whose quad has IoU >= 0.9 with the
frame, the mean IoU and the median share of the frame the quad covers. One JSON line per set.
These sets' pages fill the frame up to the scanner's margin, so IoU with the frame is a close
stand-in for IoU with the page; it is not a corner-accuracy figure for photos
(benchmarks/corners_midv.py is).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from benchmarks.timing import emit  # pylint: disable=g-import-not-at-top
from evaluation import labelled_folder  # pylint: disable=g-import-not-at-top
from inference import images as images_lib  # pylint: disable=g-import-not-at-top
from inference import quads  # pylint: disable=g-import-not-at-top

DEFAULT_SETS = ('../shared/data/us_forms,../shared/data/midv_photos:register')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--detector', default='', help='detector release folder, workdir or export')
  p.add_argument('--sets', default=DEFAULT_SETS, help='comma list of DIR or DIR:ROLE')
  p.add_argument('--zoom', type=float, default=None)
  p.add_argument('--shape_prior', type=float, default=None)
  args = p.parse_args(argv)
  from inference import detector as detector_lib  # pylint: disable=import-outside-toplevel
  det = detector_lib.load_detector(args.detector or None)
  zoom = detector_lib.DEFAULT_ZOOM if args.zoom is None else args.zoom
  prior = detector_lib.DEFAULT_SHAPE_PRIOR if args.shape_prior is None else args.shape_prior
  for spec in args.sets.split(','):
    root, _, role = spec.partition(':')
    rows = [r for r in labelled_folder.read_labels_csv(root) if not role or r.get('role') == role]
    ious, covers = [], []
    for r in rows:
      rgb = images_lib.decode_image(os.path.join(root, r['file']))
      h, w = rgb.shape[:2]
      quad = det.detect(rgb, zoom=zoom, shape_prior=prior)['quad']
      ious.append(quads.quad_iou(quad, quads.frame_quad(w, h)))
      covers.append(abs(quads.signed_area(quad)) / (w * h))
    ious = np.array(ious)
    emit({'bench': 'corners_flat', 'set': spec, 'images': len(rows), 'detector': det.source,
          'zoom': zoom, 'shape_prior': prior,
          'iou_frame>=0.9': round(float((ious >= 0.9).mean()), 4),
          'mean_iou_frame': round(float(ious.mean()), 4),
          'median_cover': round(float(np.median(covers)), 4),
          'min_iou_frame': round(float(ious.min()), 4)})


if __name__ == '__main__':
  main()
