"""The classical baseline of benchmarks/real_baselines.py (evaluation/orb_matcher.py): a page and a
perspective-warped photo of it share many RANSAC inliers, a page of another layout few; the
all-pairs matrix feeds evaluation/verification.py like cosine scores do."""
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

cv2 = pytest.importorskip('cv2', reason='opencv-python-headless is a benchmark/test dependency')

from evaluation import orb_matcher, verification  # pylint: disable=g-import-not-at-top


def _page(seed):
  """A form-like page: a title, boxed fields with labels, ruled lines, a table."""
  rng = np.random.RandomState(seed)
  img = Image.new('RGB', (600, 800), (250, 250, 245))
  d = ImageDraw.Draw(img)
  font = ImageFont.load_default(size=16)
  d.text((40 + rng.randint(0, 200), 30), f'FORM {rng.randint(100, 999)}-{seed}', fill='black',
         font=ImageFont.load_default(size=28))
  y = 90
  while y < 700:
    x = 30 + rng.randint(0, 60)
    words = ' '.join(''.join(chr(65 + c) for c in rng.randint(0, 26, rng.randint(3, 9)))
                     for _ in range(rng.randint(1, 4)))
    d.text((x, y), words, fill='black', font=font)
    if rng.rand() < 0.5:
      d.rectangle([x + 220, y - 4, x + 220 + rng.randint(80, 300), y + 22], outline='black')
    else:
      d.line([x, y + 24, 570, y + 24], fill='black')
    y += rng.randint(35, 70)
  return np.asarray(img)


def _photo_of(page):
  """The page under a perspective, on a darker desk, a little blurred."""
  h, w = page.shape[:2]
  src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
  dst = np.float32([[60, 40], [w - 10, 80], [w - 50, h - 20], [20, h - 70]])
  warp = cv2.getPerspectiveTransform(src, dst)
  photo = cv2.warpPerspective(page, warp, (w, h), borderValue=(90, 80, 70))
  return cv2.GaussianBlur(photo, (3, 3), 0)


def test_same_page_scores_higher_than_another_page():
  page, other = _page(1), _page(2)
  feats = [orb_matcher.orb_features(orb_matcher.gray_at_side(x, 800), 1000)
           for x in (page, _photo_of(page), other)]
  same = orb_matcher.inlier_count(feats[0], feats[1])
  different = max(orb_matcher.inlier_count(feats[0], feats[2]),
                  orb_matcher.inlier_count(feats[1], feats[2]))
  assert same >= 30 and same >= 3 * different, (same, different)

  # All pairs over two worker processes: the same counts, symmetric, scored like cosines.
  scores, _ = orb_matcher.all_pair_inliers(feats, workers=2)
  assert scores[0, 1] == scores[1, 0] == same
  assert scores[0, 2] == orb_matcher.inlier_count(feats[0], feats[2])
  labels, is_register = np.array(['p', 'p', 'q']), np.array([True, False, True])
  m = verification.pair_metrics_from_scores(
      *verification.pair_scores_from_matrix(scores, labels), fprs=(0.5,))
  assert m['auroc'] == 1.0 and m['pairs_positive'] == 1 and m['pairs_negative'] == 2
  assert verification.top1_from_scores(scores[~is_register][:, is_register], labels,
                                       is_register) == 1.0


def test_blank_and_tiny_images_score_zero():
  blank = orb_matcher.orb_features(np.full((50, 40), 255, np.uint8), 500)
  assert blank[0].shape == (0, 2) and blank[1].shape == (0, 32)
  page = orb_matcher.orb_features(orb_matcher.gray_at_side(_page(3), 800), 500)
  assert orb_matcher.inlier_count(blank, page) == orb_matcher.inlier_count(page, blank) == 0


def test_score_matrix_path_equals_embedding_path():
  """pair_metrics / top1 from a cosine matrix give exactly what the embedding functions give."""
  rng = np.random.RandomState(0)
  emb = rng.normal(size=(12, 5))
  labels = np.array(list('aaabbbcccddd'))
  is_register = np.arange(12) % 3 == 0
  e = verification.normalize(emb)
  cos = e @ e.T
  assert (verification.pair_metrics_from_scores(*verification.pair_scores_from_matrix(cos, labels))
          == verification.pair_metrics(emb, labels))
  assert (verification.top1_from_scores(cos[~is_register][:, is_register], labels, is_register)
          == verification.top1_identification(emb, labels, is_register))
  with pytest.raises(ValueError, match='queries'):
    verification.top1_from_scores(cos[:2, :2], labels, is_register)
