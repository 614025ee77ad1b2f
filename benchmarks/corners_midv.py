r"""Document corners and rectified classification on real phone frames (issue 15).

    python benchmarks/corners_midv.py --detector=released/corners-v3     # or a training workdir
    python benchmarks/corners_midv.py --detector=workdirs/corners --classify=whole,detector,truth

Corner accuracy (`--methods`): for each frame of DIR/quads.csv (x0,y0..x3,y3, clockwise from the
document's top-left, frame pixels), the mean corner error in % of the document's diagonal and
whether the quad IoU is >= 0.9 (inference/quads.py), for
- `detector`: the trained corner detector (models/corners.py), on the frame stretched to its square;
- `detector+refine`: its quad with each side snapped to the strongest straight edge nearby
  (inference/rectify.py `refine_quad`, classical, numpy);
- `detector+zoom`, `detector+zoom+refine`: the detector's second pass on the crop around its
  first quad grown by --zoom on each side (inference/detector.py `detect(rgb, zoom)`; what the
  CLI's --rectify does, refined), then as above;
- every detector method chooses the corners with the page-shape prior of weight --shape_prior
  (inference/corner_peaks.py; the CLI's default; 0: each heatmap's highest peak);
- `opencv`: the classical baseline, benchmark-only: the largest convex four-sided contour after
  Canny edges (`largest_quad_contour`), its corners ordered clockwise from the top-left-most one.
Classification (`--classify`): the released embedder (or `--embedder`) on the registered clean
templates (DIR/labels.csv role=register) and the frames, each frame embedded `whole`, rectified
by the `detector` (inference/rectify.py: below --min_confidence or a degenerate quad, the whole
frame), by the `refined` detector quad, by the `zoomed` or `zoomed_refined` quad (the CLI's), by the `opencv` quad, or by the true quad (`truth`: the ceiling); figures by
evaluation/verification.py (every pair: TPR@FPR, AUROC; top-1 of each frame against the
registered templates), as `inference.cli evaluate` scores. One JSON line per result.
"""
import argparse
import csv
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from benchmarks.timing import emit  # pylint: disable=g-import-not-at-top
from inference import quads, rectify  # pylint: disable=g-import-not-at-top
from input_pipeline import image_io  # pylint: disable=g-import-not-at-top

FPRS = (1e-4, 1e-3, 1e-2)


def read_frames(root):
  """[(path, true quad [4, 2])] from DIR/quads.csv."""
  with open(os.path.join(root, 'quads.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  return [(os.path.join(root, r['file']),
           np.array([[float(r[f'x{i}']), float(r[f'y{i}'])] for i in range(4)])) for r in rows]


def load_rgb(path):
  with open(path, 'rb') as f:
    return image_io.load_rgb(f.read())


def order_clockwise(points):
  """Four points -> clockwise (image coordinates) starting at the one nearest the top-left."""
  p = np.asarray(points, np.float64).reshape(4, 2)
  centre = p.mean(0)
  p = p[np.argsort(np.arctan2(p[:, 1] - centre[1], p[:, 0] - centre[0]))]
  return np.roll(p, -int(np.argmin(p.sum(1))), axis=0)


def largest_quad_contour(rgb, side=512):
  """The classical baseline: the largest convex 4-gon among the contours of the Canny edges (at
  `side` px longest side), or the whole frame when there is none. Returns (quad px, found)."""
  import cv2  # pylint: disable=import-outside-toplevel  (benchmark-only dependency)
  h, w = rgb.shape[:2]
  s = side / max(h, w)
  small = cv2.resize(rgb, (int(round(w * s)), int(round(h * s))), interpolation=cv2.INTER_AREA)
  gray = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), (5, 5), 0)
  edges = cv2.dilate(cv2.Canny(gray, 50, 150), np.ones((3, 3), np.uint8))
  contours, _ = cv2.findContours(edges, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
  for c in sorted(contours, key=cv2.contourArea, reverse=True)[:20]:
    approx = cv2.approxPolyDP(c, 0.02 * cv2.arcLength(c, True), True)
    if len(approx) == 4 and cv2.isContourConvex(approx):
      return order_clockwise(approx.reshape(4, 2) / s), True
  return quads.frame_quad(w, h), False


def score(method, quads_pred, frames, seconds):
  errors = [quads.corner_error_pct(p, t) for p, (_, t) in zip(quads_pred, frames)]
  ious = np.array([quads.quad_iou(p, t) for p, (_, t) in zip(quads_pred, frames)])
  return {'method': method, 'frames': len(frames),
          'mean_corner_err_pct_of_diagonal': round(float(np.mean(errors)), 3),
          'median_corner_err_pct_of_diagonal': round(float(np.median(errors)), 3),
          'share_iou_ge_0.9': round(float(np.mean(ious >= 0.9)), 4),
          'mean_iou': round(float(np.mean(ious)), 4),
          'ms_per_frame': round(1e3 * seconds / len(frames), 2)}


def classification(name, embedder, register, frames_rgb, frame_labels, reg_labels):
  from evaluation import verification  # pylint: disable=import-outside-toplevel
  size = embedder.preprocessing['image_size']
  images = np.stack([image_io.stretch_to_square(im, size) for im in register + frames_rgb])
  labels = np.array(reg_labels + frame_labels)
  is_register = np.array([True] * len(register) + [False] * len(frames_rgb))
  e = embedder.embed(images)
  m = verification.pair_metrics_from_scores(
      *verification.pair_scores_from_matrix(verification.normalize(e) @ verification.normalize(e).T,
                                            labels), fprs=FPRS)
  out = {'classify': name, 'images': len(labels), 'embedder': embedder.source}
  out.update({f'tpr@{f:.0e}': round(m[f'tpr@fpr={f:.0e}'], 4) for f in FPRS})
  out['auroc'] = round(m['auroc'], 4)
  out['top1'] = round(verification.top1_identification(e, labels, is_register), 4)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--data', default='../shared/data/midv_photos')
  p.add_argument('--detector', default='', help='detector release folder or training workdir')
  p.add_argument('--methods', default='detector,opencv')
  p.add_argument('--classify', default='', help='comma list of whole,detector,refined,opencv,truth')
  p.add_argument('--embedder', default='', help='embedding model (default: the release)')
  p.add_argument('--min_confidence', type=float, default=0.5)
  p.add_argument('--zoom', type=float, default=None,
                 help='margin of the zoomed pass (default: inference/detector.py DEFAULT_ZOOM)')
  p.add_argument('--shape_prior', type=float, default=None,
                 help="weight of the page-shape prior on the corners, every detector method "
                      "(default: inference/detector.py DEFAULT_SHAPE_PRIOR; 0: each heatmap's "
                      "highest peak, as before it)")
  p.add_argument('--warp', default='direct', choices=('direct', 'page'),
                 help="rectified frames warped straight to the embedder's square (as the CLI "
                      "does) or to the page's own size and then resized (before)")
  args = p.parse_args(argv)
  frames = read_frames(args.data)
  rgbs = [load_rgb(path) for path, _ in frames]
  methods = [m for m in args.methods.split(',') if m]
  wanted = [c for c in args.classify.split(',') if c]
  predicted, detections = {}, None
  if {'detector', 'refined', 'zoomed', 'zoomed_refined'} & set(methods + wanted):
    from inference import detector as detector_lib  # pylint: disable=import-outside-toplevel
    det = detector_lib.load_detector(args.detector or None)
    zoom = detector_lib.DEFAULT_ZOOM if args.zoom is None else args.zoom
    prior = detector_lib.DEFAULT_SHAPE_PRIOR if args.shape_prior is None else args.shape_prior
    det.detect(rgbs[0])  # compile outside the timing
    start = time.perf_counter()
    detections = [det.detect(rgb, zoom=0.0, shape_prior=prior) for rgb in rgbs]
    predicted['detector'] = ([d['quad'] for d in detections], time.perf_counter() - start)
    emit(dict(score('detector', predicted['detector'][0], frames, predicted['detector'][1]),
              detector=det.source, shape_prior=prior,
              min_confidence_seen=round(min(d['confidence'] for d in detections), 4)))
    start = time.perf_counter()
    predicted['refined'] = ([rectify.refine_quad(rgb, q) for rgb, q in
                             zip(rgbs, predicted['detector'][0])], time.perf_counter() - start)
    emit(dict(score('detector+refine', predicted['refined'][0], frames,
                    predicted['detector'][1] + predicted['refined'][1]), detector=det.source,
              shape_prior=prior))
    start = time.perf_counter()
    predicted['zoomed'] = ([det.detect(rgb, zoom=zoom, shape_prior=prior)['quad'] for rgb in rgbs],
                           time.perf_counter() - start)
    emit(dict(score('detector+zoom', predicted['zoomed'][0], frames, predicted['zoomed'][1]),
              detector=det.source, zoom=zoom, shape_prior=prior))
    start = time.perf_counter()
    predicted['zoomed_refined'] = ([rectify.refine_quad(rgb, q) for rgb, q in
                                    zip(rgbs, predicted['zoomed'][0])], time.perf_counter() - start)
    emit(dict(score('detector+zoom+refine', predicted['zoomed_refined'][0], frames,
                    predicted['zoomed'][1] + predicted['zoomed_refined'][1]), detector=det.source,
              zoom=zoom, shape_prior=prior))
  if 'opencv' in methods or 'opencv' in wanted:
    start = time.perf_counter()
    found = [largest_quad_contour(rgb) for rgb in rgbs]
    predicted['opencv'] = ([q for q, _ in found], time.perf_counter() - start)
    emit(dict(score('opencv_largest_quad', predicted['opencv'][0], frames, predicted['opencv'][1]),
              quads_found=sum(f for _, f in found)))
  if wanted:
    from evaluation import labelled_folder  # pylint: disable=import-outside-toplevel
    from inference import released  # pylint: disable=import-outside-toplevel
    from inference.model import load_model  # pylint: disable=import-outside-toplevel
    embedder = load_model(args.embedder) if args.embedder else released.load_release(released.DEFAULT_DIR)
    rows = labelled_folder.read_labels_csv(args.data)
    label_of = {os.path.join(args.data, r['file']): r['label'] for r in rows}
    register = [r for r in rows if r.get('role') == 'register']
    reg_rgbs = [load_rgb(os.path.join(args.data, r['file'])) for r in register]
    reg_labels = [r['label'] for r in register]
    frame_labels = [label_of[path] for path, _ in frames]
    # As the CLI warps: straight to the embedder's square, unless --warp=page.
    square = rectify.model_square(embedder.preprocessing) if args.warp == 'direct' else None
    for name in wanted:
      if name == 'whole':
        views, used = rgbs, len(rgbs) * [False]
      elif name == 'truth':
        views = [rectify.rectify(rgb, t, square=square) for rgb, (_, t) in zip(rgbs, frames)]
        used = len(rgbs) * [True]
      else:
        conf = ([d['confidence'] for d in detections] if detections and name != 'opencv'
                else len(rgbs) * [1.0])
        pairs = [rectify.rectify_or_whole(rgb, {'quad': q, 'confidence': c}, args.min_confidence,
                                          square)
                 for rgb, q, c in zip(rgbs, predicted[name][0], conf)]
        views, used = [v for v, _ in pairs], [info['rectified'] for _, info in pairs]
      emit(dict(classification(name, embedder, reg_rgbs, views, frame_labels, reg_labels),
                frames_rectified=int(sum(used)), warp=args.warp))


if __name__ == '__main__':
  main()
