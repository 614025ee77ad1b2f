r"""The detector's zoomed second pass and its shape prior on rendered held-out photos (issue 15):
picks the zoom margin and the prior's weight without looking at real photos.

    python benchmarks/corners_zoom.py --detector=released/corners-v3 --zooms=0,0.05,0.1,0.15,0.2,0.3
    python benchmarks/corners_zoom.py --zooms=0.15 --shape_priors=0,1,2,4,8,16

Photos of templates never trained on (input_pipeline/corner_data.py held-out ids and seeds, the
training geometry) are made at --size px (several times the detector's input, as phone frames
are), unstretched to their frame's aspect, and detected as inference detects them
(inference/detector.py `detect(rgb, zoom)`: the whole photo, then the crop around the first quad
grown by `zoom` on each side; each corner chosen among its heatmap's peaks with the page-shape
prior of weight `shape_prior`, inference/corner_peaks.py, 0: each map's highest peak), then, per
--refine search range, snapped to the edges (inference/rectify.py `refine_quad`; 0: not
refined). Per shape prior, zoom and refine: mean and median corner error in % of the page
diagonal, the share of quad IoU >= 0.9, and the mean IoU, over the photos that show a page. One
JSON line each.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from benchmarks.timing import emit  # pylint: disable=g-import-not-at-top
from inference import quads, rectify  # pylint: disable=g-import-not-at-top


def heldout_photos(size, count, template_size, num_templates):
  """[(uint8 photo [H, W, 3], true quad [4, 2] px)] of rendered held-out pages."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from configs import corners as corners_config  # pylint: disable=import-outside-toplevel
  from input_pipeline import corner_data, rendered  # pylint: disable=import-outside-toplevel
  cc = corners_config.get_config().corners.data
  cc.template_size = template_size
  docs = corner_data.CornerCaptures(rendered.HELDOUT_START + np.arange(num_templates), cc, size,
                                    cc.capture_strength)
  photos = []
  for i in range(count):
    e = {k: np.asarray(v) for k, v in docs.example(i, corner_data.HELDOUT_SEED_OFFSET).items()}
    if e['present'] < 0.5:
      continue
    h = int(round(size * float(e['aspect'])))
    photo = np.asarray(Image.fromarray(e['image']).resize((size, h), Image.BILINEAR))
    photos.append((photo, e['corners'] * np.array([size, h], np.float64)))
  return photos


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--detector', default='', help='detector release, export or workdir (default: the release)')
  p.add_argument('--zooms', default='0,0.05,0.1,0.15,0.2,0.3')
  p.add_argument('--shape_priors', default='0', help='weights of the page-shape prior; 0: none')
  p.add_argument('--refine', default='0', help='refine_quad search ranges; 0: no refine')
  p.add_argument('--size', type=int, default=768, help='photo width, px')
  p.add_argument('--count', type=int, default=200, help='photos made (negatives are dropped)')
  p.add_argument('--template_size', type=int, default=512, help='page render size, px')
  p.add_argument('--templates', type=int, default=32, help='held-out templates')
  args = p.parse_args(argv)
  from inference import detector as detector_lib  # pylint: disable=import-outside-toplevel
  det = detector_lib.load_detector(args.detector or None)
  photos = heldout_photos(args.size, args.count, args.template_size, args.templates)
  for prior, zoom in [(float(s), float(z)) for s in args.shape_priors.split(',')
                      for z in args.zooms.split(',')]:
    detected = [det.detect(photo, zoom=zoom, shape_prior=prior)['quad'] for photo, _ in photos]
    for search in [float(r) for r in args.refine.split(',')]:
      found = [rectify.refine_quad(photo, q, search=search) if search else q
               for q, (photo, _) in zip(detected, photos)]
      errors = [quads.corner_error_pct(f, t) for f, (_, t) in zip(found, photos)]
      ious = np.array([quads.quad_iou(f, t) for f, (_, t) in zip(found, photos)])
      emit({'shape_prior': prior, 'zoom': zoom, 'refine_search': search, 'photos': len(photos), 'detector': det.source,
            'mean_corner_err_pct_of_diagonal': round(float(np.mean(errors)), 3),
            'median_corner_err_pct_of_diagonal': round(float(np.median(errors)), 3),
            'share_iou_ge_0.9': round(float(np.mean(ious >= 0.9)), 4),
            'mean_iou': round(float(np.mean(ious)), 4)})


if __name__ == '__main__':
  main()
