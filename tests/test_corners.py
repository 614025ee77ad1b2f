"""Issue 15: the corner detector trains and checkpoints, captures place their corners, the rectifying
warp is right, degenerate quads are refused; the detector exports (jax.export, ONNX) with parity
and runs from ONNX without JAX; refine_quad's crop gives the whole image's answer."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import random_stats
from configs import corners as corners_config
from errors import InputError
from inference import quads, rectify
from input_pipeline import captures
from input_pipeline.image_io import stretch_to_square
from tools.read_scalars import read_scalars

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_detector_trains_checkpoints_and_detects(tmp_path, exported_detector):
  import jax  # pylint: disable=import-outside-toplevel
  import train_corners  # pylint: disable=import-outside-toplevel
  from inference import detector  # pylint: disable=import-outside-toplevel
  release = exported_detector[0].source  # a tiny detector release: fine-tuned from here
  c = corners_config.get_config('tiny')
  c.corners.data.cache_dir = str(tmp_path / 'bank')
  c.corners.init_from = release
  state = train_corners.train_and_evaluate(c, str(tmp_path / 'run'))
  assert int(state.step) == 4
  # Four Adam steps at lr <= 1e-3 move no weight far from the release it started from (a fresh
  # init differs from it by the init's own scale, ~0.1 and more).
  start = exported_detector[0].variables['params']
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))),
                                       state.params['model'], start))
  assert max(moved) < 0.01, max(moved)
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
  from inference.detector import DEFAULT_SHAPE_PRIOR, DEFAULT_ZOOM  # pylint: disable=import-outside-toplevel
  model = types.SimpleNamespace(preprocessing=default_preprocessing(32))
  ns = lambda **kw: argparse.Namespace(**dict(dict(detector=detector_dir, min_confidence=0.5,
                                                   detector_zoom=None, detector_shape_prior=None),
                                              **kw))
  args = ns(rectify=True)
  cli.use_rectification(args, model)
  assert model.preprocessing['rectify']['min_confidence'] == 0.5 and args.rectifier
  assert model.preprocessing['rectify']['warp'] == 'direct'  # straight to the 32 px square
  assert model.preprocessing['rectify']['zoom'] == DEFAULT_ZOOM  # the second, zoomed pass
  assert model.preprocessing['rectify']['refine'] is False       # refine_quad after one pass only
  assert model.preprocessing['rectify']['shape_prior'] == DEFAULT_SHAPE_PRIOR > 0
  one_pass = types.SimpleNamespace(preprocessing=default_preprocessing(32))
  cli.use_rectification(ns(rectify=True, detector_zoom=0.0, detector_shape_prior=0.0), one_pass)
  assert 'zoom' not in one_pass.preprocessing['rectify']
  assert 'shape_prior' not in one_pass.preprocessing['rectify']
  assert one_pass.preprocessing['rectify']['refine'] is True
  rectified = str(tmp_path / 'rectified.npz')
  Registry('f', 4, model.preprocessing).save(rectified)
  with pytest.raises(InputError, match='mixing'):
    cli.use_rectification(ns(rectify=False),
                          types.SimpleNamespace(preprocessing=default_preprocessing(32)), rectified)
  follows, follower = ns(rectify=None), types.SimpleNamespace(preprocessing=default_preprocessing(32))
  cli.use_rectification(follows, follower, rectified)
  assert follows.rectifier is not None
  image, info = follows.rectifier(np.full((40, 30, 3), 128, np.uint8))
  assert image.ndim == 3 and set(info) >= {'rectified', 'quad', 'confidence'}
  assert follower.preprocessing == Registry.load(rectified).preprocessing  # zoom included
  # A registry rectified before the direct warp, the zoomed pass and the shape prior (none of
  # 'warp', 'zoom', 'shape_prior' in its record) keeps its own warp, one pass and each map's
  # highest peak, so its entries and new queries stay comparable.
  older = str(tmp_path / 'older.npz')
  record = {k: v for k, v in model.preprocessing['rectify'].items()
            if k not in ('warp', 'zoom', 'shape_prior')}
  record['refine'] = True  # as rectify_record wrote it then
  Registry('f', 4, dict(model.preprocessing, rectify=record)).save(older)
  follows_old = types.SimpleNamespace(preprocessing=default_preprocessing(32))
  cli.use_rectification(ns(rectify=None), follows_old, older)
  assert follows_old.preprocessing == Registry.load(older).preprocessing


def test_fine_tuning_from_a_release_of_another_architecture_is_one_line(exported_detector):
  import train_corners  # pylint: disable=import-outside-toplevel
  from errors import ConfigError  # pylint: disable=import-outside-toplevel
  c = corners_config.get_config('tiny')
  c.corners.init_from = exported_detector[0].source
  c.model.head_channels = 16
  with pytest.raises(ConfigError, match='model.head_channels=8, this config 16'):
    train_corners.init_from_release(c, None)
  c = corners_config.get_config('tiny')
  c.corners.init_from = exported_detector[0].source
  c.data.image_size = 96
  with pytest.raises(ConfigError, match='trained at 64 px'):
    train_corners.init_from_release(c, None)
  c.corners.init_from = os.path.dirname(exported_detector[0].source)  # no model.json there
  with pytest.raises(InputError, match='not a detector release'):
    train_corners.init_from_release(c, None)


def _bright_box_detector(grid):
  """A classical stand-in for the network with a known answer: the corners of the bounding box
  of the bright pixels of each square, rounded to a `grid`-cell lattice as a coarse detector's
  heatmap would round them; present when anything is bright. No heatmaps (an export made
  before them): detect with shape_prior=0."""
  from inference import detector  # pylint: disable=import-outside-toplevel

  def batch_fn(squares):
    corners, presence = [], []
    for sq in squares:
      ys, xs = np.nonzero(sq.mean(-1) > 128)
      size = sq.shape[0]
      if not len(xs):
        corners.append(np.zeros((4, 2))), presence.append(-5.0)
        continue
      x0, x1 = xs.min() / size, (xs.max() + 1) / size
      y0, y1 = ys.min() / size, (ys.max() + 1) / size
      box = np.round(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) * grid) / grid
      corners.append(box), presence.append(5.0)
    return np.array(corners, np.float32), np.array(presence, np.float32)
  return detector.CornerDetectorModel(batch_fn, 64, 'bright-box', {}, None,
                                     outputs=detector.LEGACY_OUTPUTS)


def test_zoomed_pass_refines_the_quad_in_the_photos_pixels():
  from inference import detector  # pylint: disable=import-outside-toplevel
  det = _bright_box_detector(grid=16)
  photo = np.zeros((480, 640, 3), np.uint8)
  photo[113:207, 301:419] = 255  # a card covering a small part of the frame
  truth = np.array([[301, 113], [419, 113], [419, 207], [301, 207]], np.float64)
  once = det.detect(photo, zoom=0.0, shape_prior=0)
  zoomed = det.detect(photo, zoom=0.25, shape_prior=0)
  assert not once['zoomed'] and zoomed['zoomed']
  assert zoomed['confidence'] == once['confidence']
  err = lambda q: np.abs(q - truth).max()
  # One pass rounds to 640/16 = 40 px steps; on the crop (~180 px), to ~11 px steps.
  assert err(once['quad']) > 12 and err(zoomed['quad']) < 6, (once['quad'], zoomed['quad'])
  # Nothing found: no second pass.
  assert not det.detect(np.zeros((60, 80, 3), np.uint8), zoom=0.1, shape_prior=0)['zoomed']
  # Without heatmaps the shape prior cannot run: one line saying what to do.
  with pytest.raises(InputError, match='no heatmaps output.*export it again'):
    det.detect(photo)


def _peaked_maps(spots, h=24, w=32):
  """[h, w, 4] heatmap logits: for each corner a list of (x, y in [0, 1], height) bumps."""
  yy, xx = (np.arange(h)[:, None] + 0.5) / h, (np.arange(w)[None, :] + 0.5) / w
  maps = np.full((h, w, 4), -4.0)
  for c, bumps in enumerate(spots):
    for x, y, height in bumps:
      maps[..., c] = np.maximum(maps[..., c], height - ((xx - x) ** 2 + (yy - y) ** 2) * 800)
  return maps.astype(np.float32)


def test_shape_prior_moves_a_jumped_corner_to_its_second_peak():
  """The MIDV failure (inference/corner_peaks.py): three corners on the card, the fourth map's
  highest peak on a keyboard key far off, the card's true corner its second peak."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from inference import corner_peaks  # pylint: disable=import-outside-toplevel
  from models.corners import peak_soft_argmax  # pylint: disable=import-outside-toplevel
  card = np.array([[0.3, 0.3], [0.7, 0.32], [0.68, 0.7], [0.31, 0.68]])
  spots = [[(x, y, 6.0)] for x, y in card]
  spots[0] = [(0.12, 0.08, 6.0), (0.3, 0.3, 5.0)]  # the key's corner wins on its own
  maps = _peaked_maps(spots)
  xy, mass = corner_peaks.peaks(maps)
  # The first peak of each map is what the model's peak_soft_argmax takes.
  np.testing.assert_allclose(xy[:, 0], np.asarray(peak_soft_argmax(jnp.asarray(maps[None])))[0],
                             atol=1e-5)
  size = (640, 480)
  alone = corner_peaks.consistent_quad(xy, mass, size, 0.0)
  together = corner_peaks.consistent_quad(xy, mass, size, 4.0)
  err = lambda q: np.linalg.norm(q - card * size, axis=-1)
  assert err(alone)[0] > 100 and err(together).max() < 10, (alone, together)
  # A clear page is left as its peaks are.
  clean = corner_peaks.peaks(_peaked_maps([[(x, y, 6.0), (0.5, 0.05, 2.0)] for x, y in card]))
  np.testing.assert_allclose(corner_peaks.consistent_quad(*clean, size, 4.0), clean[0][:, 0] * size)
  # Only convex clockwise outlines are chosen; with none among the peaks, the peaks.
  crossed = corner_peaks.peaks(_peaked_maps([[(x, y, 6.0)] for x, y in card[[1, 0, 2, 3]]]))
  np.testing.assert_allclose(corner_peaks.consistent_quad(*crossed, size, 4.0),
                             crossed[0][:, 0] * size)


def test_zoom_box_grows_keeps_trained_aspects_and_stays_in_the_photo():
  from inference.detector import zoom_box  # pylint: disable=import-outside-toplevel
  square = np.array([[100, 100], [200, 100], [200, 200], [100, 200]], np.float64)
  assert zoom_box(square, 1000, 1000, 0.1) == [90, 90, 210, 210]
  receipt = np.array([[100, 100], [140, 100], [140, 500], [100, 500]], np.float64)  # 1:10
  x0, y0, x1, y1 = zoom_box(receipt, 1000, 1000, 0.0)
  assert (y1 - y0) / (x1 - x0) == pytest.approx(16 / 9, rel=0.01)
  x0, y0, x1, y1 = zoom_box(square - 90, 1000, 1000, 0.5)  # reaches past the top-left
  assert (x0, y0) == (0, 0) and (x1, y1) == (160, 160)
  assert zoom_box(np.array([[5, 5], [8, 5], [8, 8], [5, 8]], np.float64), 1000, 1000, 0.1) is None


def test_full_page_corners_fill_the_frame():
  """input_pipeline/corner_data.py: edge-to-edge pages (PDFs, scans, registered templates):
  clean ones exactly at the frame's corners, scans and close photos within the inset."""
  from input_pipeline import corner_data  # pylint: disable=import-outside-toplevel
  geo = corners_config.get_config().corners.data.geometry
  unit = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
  modes = []
  for i in range(40):
    corners, aspect, mode = corner_data.full_page_corners(
        tf.constant([5, i], tf.int64), tf.constant([10.0, 20.0, 110.0, 160.0]), geo)
    corners, mode = corners.numpy(), int(mode)
    modes.append(mode)
    assert float(aspect) == pytest.approx(1.4)
    if mode == 0:
      np.testing.assert_array_equal(corners, unit)
    else:
      assert np.abs(corners - unit).max() <= geo.full_page_inset + 0.02  # inset + skew
      assert np.abs(corners - unit).max() > 0
  assert set(modes) == {0, 1, 2}


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


def test_capture_with_corners_applies_the_callers_mode_not_a_drawn_one():
  """corner_data passes its own mode (2, a photo; 0 or 1 for full pages): the capture's own
  draw of clean / scan / photo must not replace it (it did once, and 60% of the detector's
  photos came out as clean renders or scans on a scanner lid, their page outline often lost
  white on white)."""
  size = 64
  page = np.full((64, 64, 3), 250, np.uint8)
  box = tf.constant([16.0, 8.0, 48.0, 56.0])
  corners = np.array([[20.0, 14.0], [44.0, 16.0], [42.0, 50.0], [18.0, 46.0]], np.float32)
  t = np.arange(size) + 0.5
  ys, xs = np.meshgrid(t, t, indexing='ij')
  far = ~quads._inside(corners * 1.2 - 6, xs, ys)  # pylint: disable=protected-access
  for i in range(12):
    seed = tf.constant([7, i], tf.int64)
    clean, _ = captures.capture(tf.constant(page), box, seed, size, corners=corners,
                                paper_prob=0.0, mode=0)
    desk = captures._background(seed, size, tf.constant(page), box, 0.0)  # pylint: disable=protected-access
    # Mode 0 (clean): the desk around the page exactly as drawn, no lid, no effects.
    np.testing.assert_allclose(clean.numpy()[far], np.round(desk.numpy())[far], atol=1)


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


def test_direct_warp_to_the_square_matches_warp_then_stretch_without_aliasing():
  # A page of 2-px cells, six times the square's side in the photo: a bilinear warp straight to
  # the square would sample the cells (moire); the photo is first reduced, as a resize averages.
  doc = _checkerboard(640, 400, cell=2)
  doc[:60, :60] = (255, 0, 0)
  quad = np.array([[40.0, 30.0], [660.0, 60.0], [640.0, 470.0], [20.0, 430.0]])
  rect = np.array([[0, 0], [640, 0], [640, 400], [0, 400]], np.float64)
  coeffs = quads.homography(quad, rect).flatten()[:8]
  photo = np.asarray(Image.fromarray(doc).transform((700, 520), Image.Transform.PERSPECTIVE,
                                                    tuple(coeffs), Image.BILINEAR))
  square = 64
  direct = rectify.rectify(photo, quad, square=square).astype(float)
  assert direct.shape == (square, square, 3)
  reference = stretch_to_square(rectify.rectify(photo, quad), square).astype(float)
  inner = (slice(2, -2), slice(2, -2))
  diff = np.mean(np.abs(direct[inner] - reference[inner]))
  corners = np.array([[0, 0], [square, 0], [square, square], [0, square]], np.float64)
  naive = np.asarray(Image.fromarray(photo).transform(  # the warp alone, nothing averaged
      (square, square), Image.Transform.PERSPECTIVE,
      tuple(quads.homography(corners, quad).flatten()[:8]), Image.BILINEAR)).astype(float)
  assert diff < 2 and np.mean(np.abs(naive[inner] - reference[inner])) > 20  # 0.24 and 44 here
  assert direct[2, 2, 0] > 200 and direct[2, 2, 2] < 60  # the red block is still top-left


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


# ---- export of the detector (jax.export and ONNX), loading it without JAX, refine_quad's crop ----

@pytest.fixture(scope='module')
def exported_detector(tmp_path_factory):
  """configs/corners.py:tiny's detector (random, as a release folder) exported by the CLI's
  helper (`inference.cli export --detector D --check-data ...`), both formats."""
  import argparse  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from inference import cli, detector, released  # pylint: disable=import-outside-toplevel
  from inference.export import detector_check_photos  # pylint: disable=import-outside-toplevel
  from models.corners import build_detector  # pylint: disable=import-outside-toplevel
  c = corners_config.get_config('tiny')
  size = c.data.image_size
  variables = build_detector(c.model).init(jax.random.PRNGKey(0),
                                           np.zeros((1, size, size, 3), np.uint8))
  root = tmp_path_factory.mktemp('detector')
  release = str(root / 'release')
  released.save_release(release, c.model.to_dict(), random_stats(variables), size, {})
  photos = []
  for n, page in enumerate(detector_check_photos(96, 3, seed=2)):  # non-square photos
    photos.append(str(root / f'photo{n}.png'))
    Image.fromarray(page).resize((72 + 8 * n, 96)).save(photos[-1])
  out = str(root / 'export')
  results, text = cli.export_detector(argparse.Namespace(detector=release, out=out),
                                      ('jax', 'onnx'), photos)
  return detector.load_detector(release), out, results, text


def test_exported_detector_matches_jax(exported_detector):
  from inference import detector  # pylint: disable=import-outside-toplevel
  from inference.export import detector_check_photos  # pylint: disable=import-outside-toplevel
  model, out, results, text = exported_detector
  assert results['fingerprint'] == model.fingerprint and len(text) == 2
  size = model.image_size
  x = detector_check_photos(size, 4, seed=5)
  want = model.detect_logits(x)
  for fmt, name in (('jax', 'detector.jaxexport'), ('onnx', 'detector.onnx')):
    assert results[fmt]['path'].endswith(name) and results[fmt]['check_images'] == 3
    assert results[fmt]['corners_max_abs_diff'] < 1e-5, results
    assert results[fmt]['presence_max_abs_diff'] < 1e-4, results
    assert results[fmt]['heatmaps_max_abs_diff'] < 1e-3, results
    loaded = detector.load_detector(results[fmt]['path'], num_threads=1)
    assert loaded.fingerprint == model.fingerprint and loaded.variables is None
    got = loaded.detect_logits(x)
    assert got[0].shape == (4, 4, 2) and got[1].shape == (4,)
    assert np.abs(got[0] - want[0]).max() < 1e-5 and np.abs(got[1] - want[1]).max() < 1e-4
  assert not [p for p in os.listdir(out) if p.startswith('.')]  # no temporary folder left


def test_export_made_before_the_heatmaps_output_still_detects(exported_detector, tmp_path):
  """An export with the two outputs detectors had before the shape prior (corners, presence):
  it loads and detects with --detector-shape-prior 0; with the prior it says, in one line, to
  export again."""
  import onnx  # pylint: disable=import-outside-toplevel
  from inference import detector  # pylint: disable=import-outside-toplevel
  model, out, _, _ = exported_detector
  graph = onnx.load(os.path.join(out, 'detector.onnx'))
  assert [o.name for o in graph.graph.output] == list(detector.OUTPUTS)
  graph.graph.output.pop()  # heatmaps
  onnx.save(graph, str(tmp_path / 'detector.onnx'))
  with open(os.path.join(out, 'detector.json')) as f:
    meta = json.load(f)
  with open(tmp_path / 'detector.json', 'w') as f:
    json.dump(dict(meta, outputs=list(detector.LEGACY_OUTPUTS)), f)
  old = detector.load_detector(str(tmp_path), num_threads=1)
  assert old.outputs == detector.LEGACY_OUTPUTS and old.fingerprint == model.fingerprint
  photo = np.asarray(Image.fromarray(_checkerboard(160, 100)).resize((120, 90)))
  np.testing.assert_allclose(old.detect(photo, shape_prior=0)['quad'],
                             model.detect(photo, shape_prior=0)['quad'], atol=0.05)
  with pytest.raises(InputError, match='no heatmaps output'):
    old.detect(photo)


def test_registry_rectified_by_an_earlier_default_detector_finds_it(exported_detector, tmp_path,
                                                                   monkeypatch):
  """When the default detector changes (released/corners-vN), a registry rectified by an earlier
  one is not refused: without --detector its own release is found by fingerprint; with another
  --detector the refusal is one line naming both."""
  import argparse  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  from inference import cli, detector, released  # pylint: disable=import-outside-toplevel
  from inference.images import default_preprocessing  # pylint: disable=import-outside-toplevel
  from inference.registry import Registry  # pylint: disable=import-outside-toplevel
  old_model = exported_detector[0]
  shutil.copytree(old_model.source, tmp_path / 'corners-v1')
  newer = tmp_path / 'corners-v2'
  released.save_release(str(newer), old_model.model_config,
                        random_stats(old_model.variables, seed=3), old_model.image_size, {})
  monkeypatch.setattr(detector, 'DEFAULT_DIR', str(newer))
  assert detector.load_detector().fingerprint != old_model.fingerprint
  ns = lambda **kw: argparse.Namespace(**dict(dict(rectify=None, detector='', min_confidence=0.5,
                                                   detector_zoom=None, detector_shape_prior=None),
                                              **kw))
  built = types.SimpleNamespace(preprocessing=default_preprocessing(32))
  cli.use_rectification(ns(rectify=True, detector=str(tmp_path / 'corners-v1')), built)
  registry = str(tmp_path / 'r.npz')
  Registry('f', 4, built.preprocessing).save(registry)
  follower = types.SimpleNamespace(preprocessing=default_preprocessing(32))
  cli.use_rectification(ns(), follower, registry)
  assert follower.preprocessing == built.preprocessing  # the v1 release, found
  with pytest.raises(InputError, match=f'rectified by the corner detector {old_model.fingerprint}, '
                                       'not .*corners-v2'):
    cli.use_rectification(ns(detector=str(newer)),
                          types.SimpleNamespace(preprocessing=default_preprocessing(32)), registry)


def test_int8_detector_keeps_its_head_in_float_and_approximates(exported_detector):
  """`python -m inference.quantize --onnx export/detector.onnx`: the network in int8 (calibrated
  on rendered phone photos), the heatmap soft-argmax in float; same fingerprint and outputs."""
  import collections  # pylint: disable=import-outside-toplevel
  import onnx  # pylint: disable=import-outside-toplevel
  from inference import detector, quantize  # pylint: disable=import-outside-toplevel
  from inference.export import detector_check_photos  # pylint: disable=import-outside-toplevel
  model, out, _, _ = exported_detector
  assert quantize.main(['--onnx', os.path.join(out, 'detector.onnx'),
                        '--calibration_images', '16']) == 0
  path = os.path.join(out, 'detector.int8.onnx')
  int8 = detector.load_detector(path, num_threads=1)
  assert int8.fingerprint == model.fingerprint and int8.source == path
  graph = onnx.load(path).graph
  ops = collections.Counter(n.op_type for n in graph.node)
  assert ops['QuantizeLinear'] > 0 and ops['Conv'] > 0
  # The heatmap logits come out of the int8 convs; from the peak search on (ArgMax, the
  # soft-argmax window) everything runs in float.
  peak = min(i for i, n in enumerate(graph.node) if n.op_type == 'ArgMax')
  assert 'QuantizeLinear' in [n.op_type for n in graph.node[:peak]]
  assert 'QuantizeLinear' not in [n.op_type for n in graph.node[peak:]]
  x = detector_check_photos(model.image_size, 4, seed=5)
  (want, want_logit), (got, got_logit) = model.detect_logits(x), int8.detect_logits(x)
  # A random detector's heatmap peaks can nearly tie, and rounding then moves one to another
  # cell (as detector_check_photos says): most corners, not all, stay put. (The released
  # detector on MIDV: README "Serving speed of rectified classification".)
  moved = np.linalg.norm(got - want, axis=-1)
  assert got.shape == want.shape
  assert np.median(moved) < 0.01 and np.mean(moved < 0.02) >= 0.75, moved
  assert not [p for p in os.listdir(out) if p.startswith('.') or p.endswith('.tmp')]


def test_onnx_detector_loads_without_jax_and_finds_the_same_quad(exported_detector, tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  model, out, _, _ = exported_detector
  photo = np.asarray(Image.fromarray(_checkerboard(160, 100)).resize((120, 90)))
  np.save(tmp_path / 'photo.npy', photo)
  want = model.detect(photo)
  # The export folder as --detector: ONNX is taken, with JAX and flax made unimportable.
  script = f"""
import sys; sys.modules['jax'] = None; sys.modules['flax'] = None
import json
import numpy as np
from inference import detector, rectify
d = detector.load_detector({out!r})
found = d.detect(np.load({str(tmp_path / 'photo.npy')!r}))
image, info = rectify.rectifier(d)(np.load({str(tmp_path / 'photo.npy')!r}))
print(json.dumps({{'source': d.source, 'quad': found['quad'].tolist(),
                  'confidence': found['confidence'], 'ndim': image.ndim}}))
"""
  proc = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got['source'].endswith('detector.onnx') and got['ndim'] == 3
  np.testing.assert_allclose(got['quad'], want['quad'], atol=1e-3)  # px of a 120 x 90 photo
  assert abs(got['confidence'] - want['confidence']) < 1e-5


def test_detector_export_over_the_bound_writes_nothing(exported_detector, tmp_path):
  from inference.export import export_detector  # pylint: disable=import-outside-toplevel
  model = exported_detector[0]
  out = tmp_path / 'export'
  with pytest.raises(ValueError, match='differs from the JAX model .*not written'):
    export_detector(model, str(out), formats=('jax',), max_diff={'corners': -1.0})
  assert os.listdir(out) == []


def test_bad_detector_files_are_one_line(exported_detector, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  from errors import CorruptFileError  # pylint: disable=import-outside-toplevel
  from inference import detector  # pylint: disable=import-outside-toplevel
  out = exported_detector[1]
  bad = tmp_path / 'bad'
  bad.mkdir()
  shutil.copy(os.path.join(out, 'detector.json'), bad / 'detector.json')
  cases = []
  (bad / 'detector.onnx').write_bytes(open(os.path.join(out, 'detector.onnx'), 'rb').read()[:5000])
  cases.append((str(bad / 'detector.onnx'), CorruptFileError, 'not a readable ONNX model'))
  (bad / 'detector.jaxexport').write_bytes(b'\x00garbage')
  cases.append((str(bad / 'detector.jaxexport'), CorruptFileError, 'not a readable jax.export'))
  cases.append((str(bad), CorruptFileError, 'not a readable ONNX model'))  # the folder: ONNX
  cases.append((str(tmp_path / 'missing.onnx'), InputError, 'no such detector file'))
  cases.append((str(tmp_path), InputError, 'neither a corner-detector release'))
  nometa = tmp_path / 'nometa'
  nometa.mkdir()
  shutil.copy(os.path.join(out, 'detector.onnx'), nometa / 'detector.onnx')
  cases.append((str(nometa), InputError, 'missing metadata file'))
  garbled = tmp_path / 'garbled'
  garbled.mkdir()
  shutil.copy(os.path.join(out, 'detector.onnx'), garbled / 'detector.onnx')
  (garbled / 'detector.json').write_text('{"kind": "corner_detector", "image_size": "big"}')
  cases.append((str(garbled), CorruptFileError, 'garbles image_size'))
  embedder_meta = tmp_path / 'embedder_meta'
  embedder_meta.mkdir()
  shutil.copy(os.path.join(out, 'detector.onnx'), embedder_meta / 'detector.onnx')
  (embedder_meta / 'detector.json').write_text('{"fingerprint": "x", "embed_dim": 8}')
  cases.append((str(embedder_meta), InputError, "not a corner detector's export metadata"))
  for path, kind, why in cases:
    with pytest.raises(kind) as e:
      detector.load_detector(path)
    assert why in str(e.value) and '\n' not in str(e.value), (path, str(e.value))


@pytest.mark.parametrize('size', [(300, 240), (1000, 700), (577, 1031)])
def test_refine_quad_reads_a_crop_with_the_whole_photos_values(size, monkeypatch):
  """refine_quad greys and blurs only the part of the working image it reads (_read_box): the
  same quad as from the whole image (no crop, as before), to the bit."""
  w, h = size
  doc = _checkerboard(160, 100, cell=25)
  rect = np.array([[0, 0], [160, 0], [160, 100], [0, 100]], np.float64)
  quad = np.array([[0.2, 0.17], [0.83, 0.29], [0.77, 0.79], [0.13, 0.62]]) * [w, h]
  coeffs = quads.homography(quad, rect).flatten()[:8]
  photo = np.asarray(Image.fromarray(doc).transform((w, h), Image.Transform.PERSPECTIVE,
                                                    tuple(coeffs), Image.BILINEAR))
  rng = np.random.RandomState(w)
  roughs = [quad + rng.normal(0, 0.02 * w, (4, 2)) for _ in range(3)]
  cropped = [rectify.refine_quad(photo, r) for r in roughs]
  monkeypatch.setattr(rectify, '_read_box', lambda xs, ys, small_size: (0, 0) + tuple(small_size))
  whole = [rectify.refine_quad(photo, r) for r in roughs]
  for c, wq, r in zip(cropped, whole, roughs):
    assert np.array_equal(c, wq)
  assert any(not np.array_equal(c, r) for c, r in zip(cropped, roughs))  # it did move corners


def test_flat_templates_enter_a_rectified_registry_whole(exported_detector, tmp_path, capsys):
  """`register --rectify --flat`: clean templates (scans, PDF renders) are embedded whole into a
  rectified registry, as a perfect outline would flatten them; without --rectify, one line."""
  import jax  # pylint: disable=import-outside-toplevel
  from configs import default  # pylint: disable=import-outside-toplevel
  from inference import cli, images, released  # pylint: disable=import-outside-toplevel
  from inference.model import build_model  # pylint: disable=import-outside-toplevel
  from inference.registry import Registry  # pylint: disable=import-outside-toplevel
  m = default.get_config().model
  m.width, m.squeeze_channels, m.embed_dim = 0.25, 8, 16
  variables = build_model(m).init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.uint8),
                                  train=False)
  embedder = str(tmp_path / 'embedder')
  released.save_release(embedder, m.to_dict(), random_stats(variables), 32, {})
  page = str(tmp_path / 'page.png')
  Image.fromarray(_checkerboard(60, 80)).save(page)
  reg = str(tmp_path / 'reg.npz')
  base = ['register', '--checkpoint', embedder, '--registry', reg, '--label', 'A', page,
          '--no-progress', '--json']
  assert cli.main(base + ['--flat']) == 1  # no --rectify: nothing to be flat for
  assert '--flat' in capsys.readouterr().err and not os.path.exists(reg)
  assert cli.main(base + ['--rectify', '--flat', '--detector', exported_detector[0].source]) == 0
  capsys.readouterr()
  registry = Registry.load(reg)
  assert registry.preprocessing['rectify']['detector'] == exported_detector[0].fingerprint
  model = released.load_release(embedder)
  whole = model.embed(images.load_images([page], model.preprocessing).images)
  np.testing.assert_allclose(registry.embeddings[0], whole[0], atol=1e-5)
  # evaluate --flat-register: per file, the registered ones whole, the others rectified.
  query = str(tmp_path / 'query.png')
  Image.fromarray(_checkerboard(80, 60)).save(query)
  loaded = images.load_images(
      [page, query], model.preprocessing, transform=lambda rgb: (rgb, {'rectified': True}),
      transform_for=lambda path: rectify.flat_page if path == page else None)
  assert loaded.infos[0]['flat'] and loaded.infos[1] == {'rectified': True}
