"""Command-line tool: python -m inference.cli <subcommand> --help

  embed      --checkpoint W --data DIR --out E.npy       one L2-normalised row per labels.csv row
  register   --checkpoint W --registry R.npz (--tree ROOT | --label L FILES...) [--turns 180]
  classify   --checkpoint W --registry R.npz FILES/FOLDERS/GLOBS [--top-k K] [--type T]
  calibrate  --checkpoint W --registry R.npz [--data DIR] [--far 1e-4]
  list       --registry R.npz           remove --registry R.npz --label L
  evaluate   --checkpoint W --data DIR [--out metrics.json] [--roc roc.png]
  export     --checkpoint W --out DIR [--formats jax,onnx] [--detector [D]]

--checkpoint takes a training workdir, an export folder, a .jaxexport / .onnx file, or a released
model folder; without it the released model (released/docembed-v4, README) is used.
--rectify (embed, register, classify, calibrate, evaluate; issue 15): each photo is flattened
along its detected document corners (released/corners-v3: the whole photo, then a second look
at the crop around the first quad, --detector-zoom; the four corners chosen together among their
heatmaps' peaks so they outline a page, --detector-shape-prior) before it is embedded; a registry
records it and refuses the other kind. Templates that are flat pages already (scans, PDF renders) go into a
rectified registry whole with `register --rectify --flat`. --rectify is for photos of a page: the
detector outlines only a part of a page that fills its frame (benchmarks/corners_flat.py), so a
registry of scans queried with scans is better left unrectified (README, issue 15).
--turns 180 (or 90,180,270) on register: each image is also entered turned by those degrees, so
captures fed upside down (or sideways) meet their type; answers say which turn matched.
Plain text by default, --json for JSON; bad input is one line on stderr and exit status 1, and
a registry file is only ever replaced whole, after the command succeeded.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

from errors import InputError
import file_io
from file_io import clean_stale_temps, locked, write_json_atomic, write_with_atomic
from inference import images as images_lib
from inference import released

PROGRESS_MIN_ITEMS = 32  # a progress bar only where a person would wait
RECTIFYING_COMMANDS = ('embed', 'register', 'classify', 'calibrate', 'evaluate')


def progress_fn(args, what):
  def wrap(items):
    items = list(items)
    if args.no_progress or len(items) < PROGRESS_MIN_ITEMS:
      return items
    from tqdm import tqdm
    return tqdm(items, desc=what, unit='img' if what != 'embed' else 'batch', file=sys.stderr,
                leave=False)
  return wrap


def emit(args, obj, text):
  print(json.dumps(obj) if args.json else text)


def load_model(args):
  if released.is_release(args.checkpoint):
    return released.load_release(args.checkpoint)
  from inference.model import load_model as load  # JAX only imported by commands that need it
  return load(args.checkpoint)


def load_registry(path, model, create=False):
  from inference.registry import Registry
  if create and not file_io.exists(path):  # file_io: a gs:// registry exists too
    return Registry.for_model(model)
  return Registry.load(path, model)


def update_registry(path, model, change, create=False):
  """Read, change, save under the registry's lock: two writers both land, one after the other
  (the second re-reads the first's result), and nothing is written if `change` raises."""
  with locked(path):
    for name in clean_stale_temps(path):
      print(f'removed {name}, left by a writer that was killed', file=sys.stderr)
    reg = load_registry(path, model, create=create)
    result = change(reg)
    reg.save(path)
  return reg, result


def embed_files(args, model, paths, skip_unreadable=False, uncertainty=False):
  """(loaded images, embeddings) and, with uncertainty=True, the log-variances of the model's
  uncertainty head (None without one) as a third item."""
  loaded = images_lib.load_images(paths, model.preprocessing, skip_unreadable=skip_unreadable,
                                  progress=progress_fn(args, 'load'),
                                  transform=getattr(args, 'rectifier', None))
  for path, why in loaded.skipped:
    print(f'skipped: {why}', file=sys.stderr)
  if uncertainty:
    return (loaded,) + model.embed_with_uncertainty(loaded.images,
                                                    progress=progress_fn(args, 'embed'))
  return loaded, model.embed(loaded.images, progress=progress_fn(args, 'embed'))


def use_rectification(args, model, registry=None):
  """Issue 15: whether this command flattens each photo along its detected document corners
  before embedding (inference/rectify.py): --rectify / --no-rectify, else what `registry` was
  built with, else not. The choice goes into model.preprocessing, which a registry records and
  checks, so rectified and whole-photo embeddings are never mixed."""
  recorded, recorded_warp, recorded_zoom, recorded_prior = None, None, None, None
  recorded_detector = None
  if registry and file_io.exists(registry):
    from inference.registry import Registry
    preprocessing = Registry.load(registry).preprocessing
    recorded = 'rectify' in preprocessing
    # Registries rectified before the direct warp existed record none: their warp is kept.
    recorded_warp = preprocessing['rectify'].get('warp', 'page') if recorded else None
    # Likewise the zoomed second pass: none recorded, none used (unless --detector-zoom says).
    recorded_zoom = preprocessing['rectify'].get('zoom', 0.0) if recorded else None
    # And the shape prior on the corners (inference/corner_peaks.py).
    recorded_prior = preprocessing['rectify'].get('shape_prior', 0.0) if recorded else None
    recorded_detector = preprocessing['rectify'].get('detector') if recorded else None
  wanted = bool(recorded) if args.rectify is None else args.rectify
  if recorded is not None and wanted != recorded:
    kind = lambda rectified: 'rectified' if rectified else 'whole-photo'
    raise InputError(f'{registry} holds {kind(recorded)} embeddings: mixing them with '
                     f'{kind(wanted)} ones is not allowed (drop --{"no-" if recorded else ""}'
                     'rectify, or register into a new registry)')
  args.rectifier = None
  if wanted:
    from inference import detector as detector_lib
    from inference import rectify
    detector = detector_lib.load_detector(args.detector)
    if recorded_detector and detector.fingerprint != recorded_detector:
      # Built with another detector: without --detector, the release it was built with (an
      # earlier default) if it is here; else one line naming both.
      found = None if args.detector else detector_lib.find_release(recorded_detector)
      if not found:
        raise InputError(f'{registry} was rectified by the corner detector {recorded_detector}, '
                         f'not {detector.source} ({detector.fingerprint}): pass the one it was '
                         'built with as --detector, or register into a new registry')
      detector = detector_lib.load_detector(found)
    square = rectify.model_square(model.preprocessing) if recorded_warp != 'page' else None
    zoom = args.detector_zoom
    if zoom is None:
      zoom = detector_lib.DEFAULT_ZOOM if recorded_zoom is None else recorded_zoom
    prior = args.detector_shape_prior
    if prior is None:
      prior = detector_lib.DEFAULT_SHAPE_PRIOR if recorded_prior is None else recorded_prior
    model.preprocessing = dict(model.preprocessing, rectify=rectify.rectify_record(
        detector, args.min_confidence, square, zoom, prior))
    args.rectifier = rectify.rectifier(detector, args.min_confidence, square, zoom, prior)


def flat_page_transform(args, option):
  """inference/rectify.py flat_page, for images given as flat pages into rectified embeddings;
  without rectification the option means nothing, and saying so is one line."""
  if not args.rectifier:
    raise InputError(f'{option}: only with --rectify (a rectified registry); without '
                     'rectification every image is embedded whole anyway')
  from inference.rectify import flat_page
  return flat_page


def rectified_count(loaded):
  return sum(1 for info in loaded.infos if info and info['rectified'])


# ---- subcommands ----
def cmd_embed(args):
  model = load_model(args)
  use_rectification(args, model)
  rows = images_lib.read_labels_csv(args.data)
  # Strict: the output has exactly one row per csv row, in csv order.
  loaded, emb = embed_files(args, model, [r[0] for r in rows])
  write_with_atomic(args.out, lambda tmp: np.save(tmp, emb))
  note = f', {rectified_count(loaded)} rectified' if args.rectifier else ''
  emit(args, {'out': args.out, 'rows': len(emb), 'dim': int(emb.shape[1]),
              'fingerprint': model.fingerprint, 'rectified': rectified_count(loaded),
              'rectification': [dict(info, file=p) for p, info in zip(loaded.paths, loaded.infos)
                                if info]},
       f'wrote {args.out}: {len(emb)} x {emb.shape[1]} (model {model.fingerprint}{note})')


def cmd_register(args):
  model = load_model(args)
  use_rectification(args, model, args.registry)
  existing = load_registry(args.registry, model, create=True)  # refuse a bad one before embedding
  turns = existing.register_turns if args.turns is None else parse_turns(args.turns)
  existing.set_register_turns(turns)  # a registry keeps the turns it was built with
  if args.tree:
    items = images_lib.scan_registration_tree(args.tree)
  elif args.label and args.inputs:
    images_lib.split_label(args.label)
    items = [(args.label, p) for p in images_lib.expand_inputs(args.inputs)]
  else:
    raise InputError('register: give --tree ROOT, or --label L and image files/folders/globs')
  from inference.registry import pixel_hash, turned_copies
  transform = flat_page_transform(args, 'register --flat') if args.flat else args.rectifier
  loaded = images_lib.load_images([p for _, p in items], model.preprocessing,
                                  progress=progress_fn(args, 'load'), transform=transform)
  pixels, sources, entry_turns = turned_copies(loaded.images, loaded.paths, turns)
  emb = model.embed(pixels, progress=progress_fn(args, 'embed'))
  n = len(loaded.paths)
  by_label = {}
  for row, (label, _) in enumerate(items):
    by_label.setdefault(label, []).extend(row + k * n for k in range(len(turns) + 1))

  def add_all(reg):  # under the lock, on the registry as it is now (another writer may have run)
    reg.set_register_turns(turns)
    return [reg.add_embeddings(label, emb[rows], [sources[r] for r in rows],
                               [pixel_hash(pixels[r]) for r in rows],
                               [entry_turns[r] for r in rows])
            for label, rows in by_label.items()]
  reg, reports = update_registry(args.registry, model, add_all, create=True)
  lines = [f'{args.registry}: {len(reg)} entries, {len(reg.list())} labels']
  for r in reports:
    note = ' (label existed: entries appended)' if r['label_existed'] else ''
    lines.append(f'  {r["label"]}: +{r["added"]}{note}')
    if r['skipped_duplicates']:
      lines.append(f'    skipped {r["skipped_duplicates"]} image(s) already under this label')
    for other in r['similar_labels']:
      lines.append(f'    WARNING: label {r["label"]!r} differs from {other!r} only by case/spacing')
    for d in r['duplicate_images']:
      lines.append(f'    WARNING: {d["source"]} also registered under {d["other_label"]!r} '
                   f'({d["kind"]})')
  check = reg.calibration_check()
  if check:
    lines.append(f'  warning: {check["message"]}')
  emit(args, {'registry': args.registry, 'entries': len(reg), 'reports': reports},
       '\n'.join(lines))


def cmd_classify(args):
  model = load_model(args)
  use_rectification(args, model, args.registry)
  reg = load_registry(args.registry, model)
  paths = images_lib.expand_inputs(args.inputs)
  loaded, emb, log_var = embed_files(args, model, paths, skip_unreadable=True, uncertainty=True)
  answers = reg.classify_embeddings(emb, args.top_k, args.type, args.threshold,
                                    *reg.uncertainty_args(model, log_var)) if len(emb) else []
  if log_var is not None and reg.calibration.get('uncertainty_fingerprint') != \
      model.uncertainty_fingerprint:
    print('warning: the registry\'s calibration did not set an "unsure" level for this model\'s '
          'uncertainty head (run calibrate): uncertainties are reported, never "unsure"',
          file=sys.stderr)
  if reg.threshold is None and args.threshold is None:
    print('warning: registry not calibrated: every answer passes (run calibrate)', file=sys.stderr)
  check = reg.calibration_check() if args.threshold is None else None
  if check:
    print(f'warning: {check["message"]}', file=sys.stderr)
  if args.json:
    for path, a, info in zip(loaded.paths, answers, loaded.infos):
      print(json.dumps({'file': path, **a, **({'rectification': info} if info else {})}))
  else:
    for path, a, info in zip(loaded.paths, answers, loaded.infos):
      alts = ', '.join(f'{t["label"]} {t["score"]:.3f}' for t in a['top_k'][1:])
      print(f'{path}\t{a["label"]}\t{a["score"]:.4f}' + ('' if a['accepted'] else
            f'\t(nearest {a["nearest"]})') + (f'\t[{alts}]' if alts else '')
            + (f'\tturned {a["turn"]}' if a['turn'] else '')
            + (f'\tuncertainty {a["uncertainty"]:.3f}' if 'uncertainty' in a else '')
            + rectification_note(info))
  if loaded.skipped:
    print(f'{len(loaded.skipped)} file(s) skipped', file=sys.stderr)


def rectification_note(info):
  if not info:
    return ''
  if info['rectified']:
    return f'\trectified (corners {info["quad"]}, confidence {info["confidence"]:.2f})'
  return f'\t{info["reason"]}'


def labelled_folder(args, model):
  """--data DIR: labels.csv (file,label,role) if present, else a root/<type>/[<sub>/] tree."""
  if os.path.isfile(os.path.join(args.data, 'labels.csv')):
    rows = images_lib.read_labels_csv(args.data)
    items = [(label, path) for path, label, _ in rows]
  else:
    items = images_lib.scan_registration_tree(args.data)
  loaded, emb, log_var = embed_files(args, model, [p for _, p in items], skip_unreadable=True,
                                     uncertainty=True)
  label_of = dict((p, l) for l, p in items)
  return loaded, emb, [label_of[p] for p in loaded.paths], log_var


def cmd_calibrate(args):
  from inference.calibration import calibrate_registry, calibrate_unsure
  from inference.registry import capture_uncertainty, pixel_hash
  model = load_model(args)
  use_rectification(args, model, args.registry)
  reg = load_registry(args.registry, model)  # refuse a bad registry before embedding
  log_var = None
  if args.data:
    loaded, emb, labels, log_var = labelled_folder(args, model)
    hashes = [pixel_hash(im) for im in loaded.images]
  elif reg.calibration_set is not None:  # the captures of the last calibration, kept in the file
    emb, labels, hashes = reg.calibration_set
  else:
    raise InputError('calibrate: give --data (labelled captures, including types that are not '
                     'registered); this registry holds no earlier calibration captures')
  def change(reg):
    unsure = {k: v for k, v in reg.calibration.items() if 'unsure' in k or 'uncertainty' in k}
    result = calibrate_registry(reg, emb, labels, hashes, target_far=args.far)
    if log_var is not None:  # the model has an uncertainty head: set the 'unsure' level too
      calibrate_unsure(reg, capture_uncertainty(log_var), model.uncertainty_fingerprint,
                       args.unsure_share)
    else:  # re-calibrated from the stored captures: the last 'unsure' level stays
      reg.calibration.update(unsure)
    return dict(reg.calibration)
  _, result = update_registry(args.registry, model, change)
  lo, hi = result['rate_ci95']
  text = (f'threshold {result["threshold"]:.4f} for a false-accept rate of {args.far:g} per '
          f'unregistered capture against {result["registry_entries"]} entries: '
          f'{result["false_accepts"]}/{result["unknown_trials"]} calibration captures of other '
          f'types above it ({result["achieved_rate"]:.4g}, 95% CI {lo:.2g}-{hi:.2g})')
  if 'known_correct_accept_rate' in result:
    text += (f'; registered types: {result["known_correct_accept_rate"]:.3f} of '
             f'{result["known_captures"]} captures accepted and named right')
  if 'pair_threshold' in result:
    text += (f'\n(pair figure: {result["pair_threshold"]:.4f} would let {args.far:g} of '
             f'{result["pair_impostor_pairs"]} different-type pairs through)')
  if 'unsure_threshold' in result:
    text += (f'\nunsure above uncertainty {result["unsure_threshold"]:.4f} (the most uncertain '
             f'{result["unsure_share"]:g} of the calibration captures)')
  if result.get('crossfit_splits'):
    p_lo, p_hi = result['predicted_rate_range95']
    text += (f'\npredicted rate on types never seen: {result["predicted_rate"]:.3g} '
             f'(95% range over {result["crossfit_splits"]} splits of the '
             f'{result["calibration_types"]} calibration types: {p_lo:.3g}-{p_hi:.3g})')
  if not result['resolved']:
    text += (f'\nwarning: this calibration set cannot resolve a rate of {args.far:g}: '
             f'{result["unresolved_reason"]}. Label captures of more types (at least '
             f'{result["needed_captures"]} captures)')
  emit(args, result, text)


def cmd_list(args):
  from inference.registry import Registry
  reg = Registry.load(args.registry)
  listing = reg.list()
  text = '\n'.join(f'{e["label"]}\t{e["entries"]}' for e in listing)
  text += (f'\n{len(reg)} entries; model {reg.fingerprint}; threshold {reg.threshold} '
           f'(FPR {reg.threshold_fpr})')
  if reg.register_turns:
    text += f'; images also entered turned by {", ".join(map(str, reg.register_turns))} degrees'
  emit(args, {'labels': listing, 'fingerprint': reg.fingerprint, 'threshold': reg.threshold,
              'threshold_fpr': reg.threshold_fpr, 'register_turns': reg.register_turns}, text)


def cmd_remove(args):
  _, n = update_registry(args.registry, None, lambda reg: reg.remove(args.label))
  emit(args, {'removed': n, 'label': args.label}, f'removed {n} entries of {args.label!r}')


def cmd_evaluate(args):
  from inference import evaluate as evaluate_lib
  from inference.evaluate import draw_roc_png, evaluate_embeddings, roc_curve
  model = load_model(args)
  use_rectification(args, model)
  rows = images_lib.read_labels_csv(args.data)
  transform_for = None
  if args.flat_register:
    flat_page = flat_page_transform(args, 'evaluate --flat-register')
    registered = {r[0] for r in rows if r[2] == 'register'}
    transform_for = lambda path: flat_page if path in registered else None
  loaded = images_lib.load_images([r[0] for r in rows], model.preprocessing,
                                  skip_unreadable=True, progress=progress_fn(args, 'load'),
                                  transform=args.rectifier, transform_for=transform_for)
  for _, why in loaded.skipped:
    print(f'skipped: {why}', file=sys.stderr)
  meta = {r[0]: r for r in rows}
  labels = np.array([meta[p][1] for p in loaded.paths])
  is_register = np.array([meta[p][2] == 'register' for p in loaded.paths])
  pixels = loaded.images
  if args.degrade:  # registered images stay clean, as users register them; queries degraded
    pixels = pixels.copy()
    pixels[~is_register] = evaluate_lib.degraded_copies(pixels[~is_register], args.degrade_seed)
  emb, log_var = model.embed_with_uncertainty(pixels, progress=progress_fn(args, 'embed'))
  out = {'data': args.data, 'model': model.fingerprint, 'model_source': model.source,
         'images': len(labels), 'labels': int(len(set(labels))), 'skipped': len(loaded.skipped),
         'degraded_queries': bool(args.degrade)}
  if args.rectifier:  # issue 15: how many photos were flattened along their detected corners
    out['rectified'] = rectified_count(loaded)
  out.update(evaluate_embeddings(emb, labels, is_register, model, args.fpr, args.folds,
                                 args.repeats))
  if log_var is not None:
    figures, curves = evaluate_lib.risk_coverage_figures(
        emb, labels, is_register, log_var, args.coverage)
    out.update(figures)
    if args.risk_png:
      name = os.path.basename(os.path.normpath(args.data)) + (' degraded' if args.degrade else '')
      evaluate_lib.draw_risk_coverage_png(curves, args.risk_png, name)
      out['risk_coverage_png'] = args.risk_png
  elif args.risk_png:
    raise InputError('--risk-png: this model has no uncertainty head (configs/uncertainty.py)')
  if args.roc:
    draw_roc_png({os.path.basename(os.path.normpath(args.data)): roc_curve(emb, labels)}, args.roc)
    out['roc_png'] = args.roc
  if args.out:
    write_json_atomic(args.out, out)
  text = '\n'.join(f'{k}: {v:.4f}' if isinstance(v, float) else f'{k}: {v}'
                   for k, v in out.items())
  emit(args, out, text)


def cmd_export(args):
  from inference.export import export_model
  model = load_model(args)
  formats = tuple(args.formats.split(','))
  check_paths = images_lib.expand_inputs([args.check_data])[:16] if args.check_data else []
  check = None
  if check_paths:
    check = images_lib.load_images(check_paths, model.preprocessing).images
  results = export_model(model, args.out, formats=formats, check_images=check)
  text = [f'{fmt}: {r["path"]} ({r["bytes"]} bytes), max |diff| vs JAX model '
          f'{r["max_abs_diff"]:.3g} on {r["check_images"]} images' for fmt, r in results.items()]
  out = {'fingerprint': model.fingerprint, **results}
  if args.detector is not None:  # issue 15: the corner detector beside the embedder
    out['detector'], detector_text = export_detector(args, formats, check_paths)
    text += detector_text
  emit(args, out, '\n'.join(text))


def export_detector(args, formats, check_paths):
  """--detector: the corner detector's artefacts in the same folder; (results, text lines)."""
  from inference import detector as detector_lib
  from inference.export import export_detector as export
  from input_pipeline.image_io import stretch_to_square
  detector = detector_lib.load_detector(args.detector)
  check = None
  if check_paths:  # the photos as the detector sees them: the whole photo stretched to its square
    check = np.stack([stretch_to_square(images_lib.decode_image(p), detector.image_size)
                      for p in check_paths])
  results = export(detector, args.out, formats=formats, check_images=check)
  text = [f'detector {fmt}: {r["path"]} ({r["bytes"]} bytes), max |diff| vs JAX model: corners '
          f'{r["corners_max_abs_diff"]:.3g}, presence logit {r["presence_max_abs_diff"]:.3g}, '
          f'heatmap logits {r["heatmaps_max_abs_diff"]:.3g} on '
          f'{r["check_images"]} images' for fmt, r in results.items()]
  return {'fingerprint': detector.fingerprint, 'source': detector.source, **results}, text


# ---- argument parsing ----
def positive_int(text):
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f'{text}: must be 1 or more')
  return value


def finite_float(text):
  value = float(text)
  if not math.isfinite(value):
    raise argparse.ArgumentTypeError(f'{text}: must be a finite number')
  return value


def rate(text):
  value = float(text)
  if not 0 < value < 1:
    raise argparse.ArgumentTypeError(f'{text}: must lie strictly between 0 and 1')
  return value


def zoom_margin(text):
  value = float(text)
  if not 0 <= value <= 1:
    raise argparse.ArgumentTypeError(f'{text}: must lie between 0 and 1')
  return value


def shape_prior_weight(text):
  value = float(text)
  if not 0 <= value < float('inf'):
    raise argparse.ArgumentTypeError(f'{text}: must be a finite number >= 0')
  return value


def parse_turns(text):
  """'--turns 180' / '90,180,270' -> [180] / [90, 180, 270]; '' -> []."""
  from inference.registry import TURNS
  try:
    turns = sorted({int(t) for t in text.split(',') if t.strip()}) if text else []
  except ValueError:
    turns = None
  if turns is None or any(t not in TURNS for t in turns):
    raise InputError(f'--turns {text!r}: a comma list of {", ".join(map(str, TURNS))} (degrees '
                     'counter-clockwise)')
  return turns


def build_parser():
  p = argparse.ArgumentParser(prog='python -m inference.cli', description=__doc__.split('\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split('\n', 2)[2])
  sub = p.add_subparsers(dest='command', required=True)

  def command(name, fn, help_text, model=True, registry=False):
    s = sub.add_parser(name, help=help_text, description=help_text)
    s.set_defaults(fn=fn)
    s.add_argument('--json', action='store_true', help='JSON output')
    s.add_argument('--no-progress', action='store_true', help='no progress bar')
    if model:
      s.add_argument('--checkpoint', default=released.DEFAULT_DIR,
                     help='training workdir, export folder, .jaxexport / .onnx file, or a '
                          'released model folder (default: the released model, '
                          'released/docembed-v4)')
    if registry:
      s.add_argument('--registry', required=True, help='registry file (.npz)')
    if name in RECTIFYING_COMMANDS:  # issue 15
      s.add_argument('--rectify', action=argparse.BooleanOptionalAction, default=None,
                     help='flatten each photo along its detected document corners before '
                          'embedding (default: as the registry was built; else off)')
      s.add_argument('--detector', default='', help='corner detector: release folder, '
                     'training workdir, or export (a folder with detector.onnx, or the .onnx / '
                     '.jaxexport file; ONNX runs without JAX) (default: released/corners-v3)')
      s.add_argument('--min-confidence', type=rate, default=0.5,
                     help='below this detector confidence the whole photo is embedded')
      s.add_argument('--detector-zoom', type=zoom_margin, default=None,
                     help='the detector looks again at the crop around its first quad, grown '
                          'by this share on each side; 0: one pass (default: as the registry '
                          'was built; else 0.15)')
      s.add_argument('--detector-shape-prior', type=shape_prior_weight, default=None,
                     help='weight of the page-shape prior when each corner is chosen among its '
                          "heatmap's peaks; 0: each map's highest peak (default: as the registry "
                          'was built; else 8)')
    return s

  s = command('embed', cmd_embed, 'Embed the images of DIR/labels.csv into an .npy, csv order.')
  s.add_argument('--data', required=True, help='folder with labels.csv (file,label,role)')
  s.add_argument('--out', required=True, help='output .npy: float32 [rows, dim], L2-normalised')

  s = command('register', cmd_register, 'Add labelled images to a registry (created if absent).',
              registry=True)
  s.add_argument('--tree', help='root/<type>/<image> and root/<type>/<sub-label>/<image>')
  s.add_argument('--label', help="label for the given inputs: 'type' or 'type/sub-label'")
  s.add_argument('inputs', nargs='*', help='image files, folders or globs (with --label)')
  s.add_argument('--turns', default=None,
                 help='also enter each image turned by these degrees counter-clockwise: 180, or '
                      '90,180,270 (captures fed upside down or sideways); fixed per registry '
                      '(default: as the registry was built; none for a new one)')
  s.add_argument('--flat', action='store_true',
                 help='with --rectify: the images are flat pages already (scans, PDF renders, '
                      'clean templates) and are embedded whole, as rectification would flatten '
                      'them, so photos rectified later meet them')

  s = command('classify', cmd_classify, 'Name the type of each image, or say unknown.',
              registry=True)
  s.add_argument('inputs', nargs='+', help='image files, folders or globs')
  s.add_argument('--top-k', type=positive_int, default=1, help='also list the next best labels')
  s.add_argument('--type', help="only this type's entries (its sub-labels) compete")
  s.add_argument('--threshold', type=finite_float, help='override the calibrated threshold')

  s = command('calibrate', cmd_calibrate,
              'Set the registry threshold for a target false-accept rate per unregistered '
              'capture.', registry=True)
  s.add_argument('--data', help='labels.csv folder or root/<type>/ tree: captures of registered '
                 'and of unregistered types (default: the captures of the last calibration)')
  s.add_argument('--far', '--fpr', dest='far', type=rate, default=1e-4,
                 help='target rate at which a capture of an unregistered type is accepted')
  s.add_argument('--unsure-share', type=rate, default=0.05,
                 help='with an uncertainty head: the share of (calibration) captures too '
                      'uncertain to judge, answered "unsure"')

  command('list', cmd_list, 'List the labels of a registry.', model=False, registry=True)
  s = command('remove', cmd_remove, 'Remove a label (a type removes its sub-labels).',
              model=False, registry=True)
  s.add_argument('--label', required=True)

  s = command('evaluate', cmd_evaluate, 'Pair TPR@FPR, AUROC, top-1 and open-set figures.')
  s.add_argument('--data', required=True, help='folder with labels.csv (file,label,role)')
  s.add_argument('--out', help='write the figures as JSON here')
  s.add_argument('--roc', help='write a ROC curve PNG here')
  s.add_argument('--fpr', '--far', dest='fpr', type=rate, default=1e-4,
                 help='open-set: target false-accept rate per unregistered capture')
  s.add_argument('--folds', type=positive_int, default=4,
                 help='open-set: the labels are split into this many folds, each held out once')
  s.add_argument('--repeats', type=positive_int, default=5,
                 help='open-set: random fold assignments, pooled')
  s.add_argument('--degrade', action='store_true',
                 help='queries re-captured by the training capture ops at full strength')
  s.add_argument('--degrade-seed', type=int, default=0)
  s.add_argument('--flat-register', action='store_true',
                 help='with --rectify: the role=register images are flat pages (templates, '
                      'scans) embedded whole, as `register --flat` does; queries are rectified')
  s.add_argument('--coverage', type=rate, default=0.8,
                 help='risk-coverage: the share of queries answered for error@coverage')
  s.add_argument('--risk-png', help='with an uncertainty head: risk-coverage curves PNG here')

  s = command('export', cmd_export, 'Export embed() as jax.export and ONNX, parity-checked.')
  s.add_argument('--out', required=True, help='output folder')
  s.add_argument('--formats', default='jax,onnx', help='comma-separated: jax,onnx')
  s.add_argument('--check-data', help='images for the parity check (default: random pixels; '
                 'for the detector, drawn pages)')
  s.add_argument('--detector', nargs='?', const='', default=None,
                 help='also export the corner detector (issue 15) into the same folder: '
                      'detector.jaxexport / detector.onnx + detector.json; a release folder or '
                      'training workdir (--detector alone: released/corners-v3)')
  return p


def main(argv=None):
  args = build_parser().parse_args(argv)
  try:
    args.fn(args)
  except (InputError, ValueError, OSError) as e:
    if os.environ.get('INFERENCE_DEBUG'):
      raise
    print(f'error: {str(e).splitlines()[0] if str(e) else type(e).__name__}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
