"""Issue 15: the corner detector trains and checkpoints, captures place their corners, the rectifying
warp is right, degenerate quads are refused."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from configs import corners as corners_config
from errors import InputError
from inference import quads, rectify
from input_pipeline import captures
from tools.read_scalars import read_scalars


def test_tiny_detector_trains_checkpoints_and_detects(tmp_path):
  import train_corners  # pylint: disable=import-outside-toplevel
  from inference import detector  # pylint: disable=import-outside-toplevel
  c = corners_config.get_config('tiny')
  c.corners.data.cache_dir = str(tmp_path / 'bank')
  state = train_corners.train_and_evaluate(c, str(tmp_path / 'run'))
  assert int(state.step) == 4
  scalars = read_scalars(str(tmp_path / 'run'))
  assert [s for s, _ in scalars['train/loss']] == [2, 4]
  assert 0.0 <= scalars['eval/heldout/iou_ge_0.9'][-1][1] <= 1.0
  assert scalars['eval/heldout/corner_err_pct'][-1][1] > 0
  # Resuming is train.py's checkpoint machinery (tests/test_train.py); a second run here would
  # cost its input tracing again, over this test's share of the CI time.
  assert sorted(p.name for p in (tmp_path / 'run' / 'checkpoints').iterdir()) == ['2', '4']
  det = detector.load_detector(str(tmp_path / 'run'))
  found = det.detect(np.full((90, 60, 3), 200, np.uint8))
  assert found['quad'].shape == (4, 2) and 0.0 <= found['confidence'] <= 1.0
  assert np.all((found['quad'] >= 0) & (found['quad'] <= [60, 90]))
  _check_registry_refuses_mixing(str(tmp_path / 'run'), tmp_path)


def _check_registry_refuses_mixing(detector_dir, tmp_path):
  """inference.cli: a registry records rectification; the other kind is refused, and without
  --rectify / --no-rectify a command follows the registry."""
  import argparse  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  from inference import cli  # pylint: disable=import-outside-toplevel
  from inference.images import default_preprocessing  # pylint: disable=import-outside-toplevel
  from inference.registry import Registry  # pylint: disable=import-outside-toplevel
  model = types.SimpleNamespace(preprocessing=default_preprocessing(32))
  args = argparse.Namespace(rectify=True, detector=detector_dir, min_confidence=0.5)
  cli.use_rectification(args, model)
  assert model.preprocessing['rectify']['min_confidence'] == 0.5 and args.rectifier
  rectified = str(tmp_path / 'rectified.npz')
  Registry('f', 4, model.preprocessing).save(rectified)
  with pytest.raises(InputError, match='mixing'):
    cli.use_rectification(argparse.Namespace(rectify=False, detector=detector_dir,
                                             min_confidence=0.5),
                          types.SimpleNamespace(preprocessing=default_preprocessing(32)), rectified)
  follows = argparse.Namespace(rectify=None, detector=detector_dir, min_confidence=0.5)
  cli.use_rectification(follows, types.SimpleNamespace(preprocessing=default_preprocessing(32)),
                        rectified)
  assert follows.rectifier is not None
  image, info = follows.rectifier(np.full((40, 30, 3), 128, np.uint8))
  assert image.ndim == 3 and set(info) >= {'rectified', 'quad', 'confidence'}


def test_capture_places_the_page_at_the_given_corners():
  size = 96
  page = np.zeros((64, 64, 3), np.uint8)
  page[8:56, 16:48] = (0, 255, 0)  # the page: a green box in its canvas
  corners = np.array([[20.0, 14.0], [80.0, 22.0], [74.0, 84.0], [12.0, 70.0]], np.float32)
  image, placed = captures.capture(tf.constant(page), tf.constant([16.0, 8.0, 48.0, 56.0]),
                                   tf.constant([3, 4]), size, strength=0.0, corners=corners,
                                   paper_prob=0.0)
  np.testing.assert_allclose(placed.numpy(), corners)
  image = image.numpy().astype(int)
  green = (image[..., 1] > 200) & (image[..., 0] < 60) & (image[..., 2] < 60)
  t = np.arange(size) + 0.5
  ys, xs = np.meshgrid(t, t, indexing='ij')
  inside = quads._inside(corners, xs, ys)  # pylint: disable=protected-access
  assert np.count_nonzero(green & inside) / np.count_nonzero(green | inside) > 0.9


def _checkerboard(w, h, cell=10):
  ys, xs = np.mgrid[0:h, 0:w]
  board = (((xs // cell) + (ys // cell)) % 2 * 200 + 30).astype(np.uint8)
  rgb = np.stack([board, board // 2 + 60, 255 - board], -1)
  rgb[:12, :12] = (255, 0, 0)  # marks the top-left
  return rgb


def test_rectify_undoes_a_perspective_warp_upright_and_with_aspect():
  doc = _checkerboard(160, 100)
  quad = np.array([[60.0, 40.0], [250.0, 70.0], [230.0, 190.0], [40.0, 150.0]])
  rect = np.array([[0, 0], [160, 0], [160, 100], [0, 100]], np.float64)
  coeffs = quads.homography(quad, rect).flatten()[:8]  # photo pixel -> document pixel
  photo = np.asarray(Image.fromarray(doc).transform((300, 240), Image.Transform.PERSPECTIVE,
                                                    tuple(coeffs), Image.BILINEAR))
  flat = rectify.rectify(photo, quad)
  h, w = flat.shape[:2]
  assert w > h and abs(w / h - 1.6) < 0.15  # landscape kept, aspect near the document's
  back = np.asarray(Image.fromarray(flat).resize((160, 100), Image.BILINEAR)).astype(float)
  inner = (slice(4, -4), slice(4, -4))  # the edges blur in two resamplings
  assert np.mean(np.abs(back[inner] - doc[inner])) < 25
  assert back[3, 3, 0] > 200 and back[3, 3, 2] < 60  # the red mark is still top-left


@pytest.mark.parametrize('quad', [
    [[0, 0], [100, 100], [100, 0], [0, 100]],      # self-intersecting (a bow tie)
    [[0, 0], [0, 100], [100, 100], [100, 0]],      # counter-clockwise (mirrored)
    [[0, 0], [50, 0], [100, 0], [50, 1]],          # nearly a line
    [[10, 10], [14, 10], [14, 14], [10, 14]],      # tiny
    [[0, 0], [100, 0], [float('nan'), 100], [0, 100]],
])
def test_degenerate_quads_are_refused_and_fall_back_to_the_whole_photo(quad):
  photo = np.zeros((200, 200, 3), np.uint8)
  with pytest.raises(InputError, match='degenerate'):
    rectify.rectify(photo, np.array(quad, float))
  image, info = rectify.rectify_or_whole(photo, {'quad': np.array(quad, float), 'confidence': 0.99},
                                         min_confidence=0.5)
  assert image is photo and not info['rectified'] and 'degenerate' in info['reason']


def test_low_confidence_embeds_the_whole_photo_and_says_so():
  photo = np.zeros((200, 200, 3), np.uint8)
  quad = np.array([[20, 20], [180, 20], [180, 180], [20, 180]], float)
  image, info = rectify.rectify_or_whole(photo, {'quad': quad, 'confidence': 0.2}, 0.5)
  assert image is photo and not info['rectified'] and 'whole photo' in info['reason']
  image, info = rectify.rectify_or_whole(photo, {'quad': quad, 'confidence': 0.9}, 0.5)
  assert info['rectified'] and image.shape == (160, 160, 3)


def test_quad_scores():
  square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
  assert quads.quad_iou(square, square) == pytest.approx(1.0)
  assert quads.quad_iou(square, square + [5, 0]) == pytest.approx(1 / 3, abs=0.01)
  assert quads.corner_error_pct(square + [0, 1], square) == pytest.approx(100 / np.hypot(10, 10))


def test_refine_snaps_a_rough_quad_to_the_document_edges():
  doc = np.full((100, 160, 3), 230, np.uint8)
  quad = np.array([[60.0, 40.0], [250.0, 70.0], [230.0, 190.0], [40.0, 150.0]])
  rect = np.array([[0, 0], [160, 0], [160, 100], [0, 100]], np.float64)
  coeffs = quads.homography(quad, rect).flatten()[:8]
  photo = np.asarray(Image.fromarray(doc).transform((300, 240), Image.Transform.PERSPECTIVE,
                                                    tuple(coeffs), Image.BILINEAR))
  rough = quad + np.array([[5, -4], [-4, 5], [3, 4], [-5, -3]])
  refined = rectify.refine_quad(photo, rough)
  assert quads.corner_error_pct(refined, quad) < 0.5 * quads.corner_error_pct(rough, quad)
  assert quads.quad_iou(refined, quad) > 0.97
