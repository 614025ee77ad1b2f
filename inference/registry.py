"""The registry of document types: labelled reference embeddings, a threshold, a model identity.

A label is a type ('A') or a type with one sub-label ('A/glare'); every entry is one registered
image. Classification is nearest-entry (cosine) over all entries, so a sub-label's answer
carries both 'A/glare' and its type 'A'. Below the calibrated threshold the answer is 'unknown'.

File format: one .npz (allow_pickle=False) with `embeddings` float32 [N, D] and `meta_json`
(utf-8 JSON as uint8: labels, sources, content hashes, model fingerprint, preprocessing,
threshold, and each entry's turn: 0, or 90 / 180 / 270 for the registered image turned by that
many degrees counter-clockwise, added by `register --turns` so that a capture fed or photographed
upside down or sideways still meets its type at one dot product per entry); once calibrated, also `calibration_embeddings` float32 [M, D] (the labelled captures
the threshold was set on, with their types and hashes in the metadata), so that the false-accept
rate can be re-checked when the registry grows (inference/calibration.py). Written atomically;
loading it beside a different model is an error.
numpy only (plus Pillow through inference.images), so it works next to the ONNX runtime.
"""
import hashlib
import io
import json
import math
import unicodedata

import numpy as np

from errors import CorruptFileError, InputError
import file_io
from inference import images as images_lib
from inference.images import label_type, split_label
from inference.search import EntryIndex

FORMAT_VERSION = 1
UNKNOWN = 'unknown'
# The capture could not be judged (issue 14: its uncertainty is above the calibrated one): the
# document may be registered, the photo is bad.
UNSURE = 'unsure'
# Two entries under different labels scoring above this are reported as near-duplicates.
NEAR_DUPLICATE_SCORE = 0.995
TURNS = (90, 180, 270)  # degrees counter-clockwise a registered image may also be entered at


def capture_uncertainty(log_var):
  """Per-capture uncertainty: the mean log sigma^2 over dimensions (models/uncertainty.py)."""
  return np.asarray(log_var, np.float64).mean(axis=-1)


def pixel_hash(image):
  return hashlib.sha256(np.ascontiguousarray(image, np.uint8).tobytes()).hexdigest()[:20]


def turned_copies(pixels, sources, turns):
  """Model inputs [N, S, S, 3] and their sources, followed by each turned by every angle in
  `turns` (counter-clockwise; a square input turns exactly, and for a stretched page turning the
  input equals turning the photo). -> (pixels, sources, per-row turn)."""
  pixels = np.asarray(pixels)
  out, out_sources, out_turns = [pixels], list(sources), [0] * len(pixels)
  for t in turns:
    out.append(np.rot90(pixels, t // 90, axes=(1, 2)))
    out_sources += [f'{s} (turned {t})' for s in sources]
    out_turns += [t] * len(pixels)
  return np.ascontiguousarray(np.concatenate(out)), out_sources, out_turns


def label_key(label):
  """Labels that differ only by case, unicode form or spacing are 'the same' to a person."""
  return ' '.join(unicodedata.normalize('NFKC', label).casefold().split())


class Registry:
  """Registered entries for one embedding model. See module docstring."""

  def __init__(self, fingerprint, embed_dim, preprocessing, model=None):
    self.fingerprint = fingerprint
    self.embed_dim = int(embed_dim)
    self.preprocessing = dict(preprocessing)
    self.embeddings = np.zeros((0, self.embed_dim), np.float32)
    self.labels, self.sources, self.hashes = [], [], []
    self.turns = []              # per entry: 0, or the degrees its image was turned by
    self.register_turns = []     # the turns `add` enters each image at besides upright
    self.threshold = None        # a best score strictly above it is accepted
    self.calibration = {}        # how the threshold was set (target rate, interval, ...)
    self.calibration_set = None  # (embeddings [M, D], types, hashes) it was set on
    self.model = None
    self._index = None
    if model is not None:
      self.attach_model(model)

  @classmethod
  def for_model(cls, model):
    return cls(model.fingerprint, model.embed_dim, model.preprocessing, model=model)

  def attach_model(self, model):
    if model.fingerprint != self.fingerprint or model.embed_dim != self.embed_dim:
      raise InputError(
          f'registry was built with model {self.fingerprint} (dim {self.embed_dim}), not with '
          f'{model.fingerprint} (dim {model.embed_dim}) from {model.source or "?"}: re-register')
    if model.preprocessing != self.preprocessing:
      raise InputError(f'registry preprocessing {self.preprocessing} != model\'s '
                       f'{model.preprocessing}')
    self.model = model

  # ---- contents ----
  def __len__(self):
    return len(self.labels)

  @property
  def threshold_fpr(self):
    """The target false-accept rate per unregistered capture the threshold was set for."""
    return self.calibration.get('target_far', self.calibration.get('target_fpr'))

  def calibration_check(self):
    """None while the entries are those the threshold was calibrated against; else the
    re-checked false-accept rate at the stored threshold (dict with 'message')."""
    if self.threshold is None or not self.calibration.get('entries_digest'):
      return None
    if self.calibration['entries_digest'] == self._entries_digest():
      return None
    from inference import calibration as calibration_lib
    target = self.threshold_fpr
    was = self.calibration.get('registry_entries')
    if self.calibration_set is None or not len(self):
      return {'message': f'the registry changed since calibration ({was} -> {len(self)} entries) '
                         f'and holds no calibration captures: re-run calibrate with --data'}
    types = [label_type(l) for l in self.labels]
    now = calibration_lib.recheck(self.calibration_set, self.embeddings, types, self.hashes,
                                  self.threshold, target)
    lo, hi = now['rate_ci95']
    now['message'] = (
        f'the registry changed since calibration ({was} -> {len(self)} entries): at threshold '
        f'{self.threshold:.4f} the false-accept rate is now {now["false_accepts"]}/'
        f'{now["unknown_trials"]} = {now["achieved_rate"]:.4g} (95% CI {lo:.2g}-{hi:.2g}) for '
        f'a target of {target:g}; run calibrate again (it reuses the stored captures)')
    return now

  def _entries_digest(self):
    h = hashlib.sha256(np.ascontiguousarray(self.embeddings).tobytes())
    h.update(json.dumps(self.labels).encode())
    return h.hexdigest()[:20]

  def list(self):
    """[{'label', 'type', 'sub_label', 'entries'}] sorted by label."""
    counts = {}
    for label in self.labels:
      counts[label] = counts.get(label, 0) + 1
    out = []
    for label in sorted(counts):
      doc_type, sub = split_label(label)
      out.append({'label': label, 'type': doc_type, 'sub_label': sub, 'entries': counts[label]})
    return out

  def set_register_turns(self, turns):
    """The turns every registered image is also entered at (subset of TURNS). Fixed once the
    registry holds entries: types registered with and without turns would meet a turned capture
    unequally."""
    turns = sorted({int(t) for t in turns})
    if any(t not in TURNS for t in turns):
      raise InputError(f'turns {turns}: each must be one of {", ".join(map(str, TURNS))} degrees')
    if len(self) and turns != self.register_turns:
      raise InputError(f'this registry enters images at turns {self.register_turns or "none"}, '
                       f'not {turns or "none"}: keep its setting, or register into a new registry')
    self.register_turns = turns

  def add_embeddings(self, label, embeddings, sources=None, hashes=None, turns=None):
    """Registers rows of `embeddings` (normalised here) under `label`; returns a report dict.

    Reported, not refused: the label already existed (entries appended), labels that differ
    only in case/spacing, the same image under another label (exact pixels or near-duplicate
    embedding). The same image twice under the same label is skipped.
    """
    split_label(label)
    emb = np.asarray(embeddings, np.float32).reshape(-1, self.embed_dim)
    if not np.isfinite(emb).all():  # a broken model or export: never store what cannot match
      raise InputError(f'label {label!r}: the model gave NaN/Inf embeddings; nothing registered')
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    n = len(emb)
    sources = list(sources) if sources is not None else [''] * n
    hashes = list(hashes) if hashes is not None else [''] * n
    turns = [int(t) for t in turns] if turns is not None else [0] * n
    report = {'label': label, 'added': 0, 'skipped_duplicates': 0,
              'label_existed': label in self.labels, 'similar_labels': [],
              'duplicate_images': []}
    key = label_key(label)
    report['similar_labels'] = sorted({l for l in self.labels if l != label and label_key(l) == key})
    hash_to_labels = {}
    for h, l in zip(self.hashes, self.labels):
      if h:
        hash_to_labels.setdefault(h, set()).add(l)
    keep = []
    for i in range(n):
      others = hash_to_labels.get(hashes[i], set()) if hashes[i] else set()
      if label in others:
        report['skipped_duplicates'] += 1
        continue
      for other in sorted(others):
        report['duplicate_images'].append({'source': sources[i], 'other_label': other,
                                           'kind': 'identical pixels'})
      keep.append(i)
      if hashes[i]:
        hash_to_labels.setdefault(hashes[i], set()).add(label)
    if keep and len(self.embeddings):
      scores = emb[keep] @ self.embeddings.T
      other_label = np.array([l != label for l in self.labels])
      for row, i in enumerate(keep):
        for j in np.flatnonzero((scores[row] >= NEAR_DUPLICATE_SCORE) & other_label):
          if hashes[i] and hashes[i] == self.hashes[j]:
            continue  # already reported as identical
          report['duplicate_images'].append({
              'source': sources[i], 'other_label': self.labels[j],
              'kind': f'near-duplicate (score {scores[row, j]:.4f})'})
    self.embeddings = np.concatenate([self.embeddings, emb[keep]])
    self.labels += [label] * len(keep)
    self.sources += [sources[i] for i in keep]
    self.hashes += [hashes[i] for i in keep]
    self.turns += [turns[i] for i in keep]
    report['added'] = len(keep)
    self._index = None
    return report

  def add(self, label, images, progress=None):
    """Registers images (file paths, or uint8 [N, S, S, 3]) under label, each also at
    register_turns; needs the model."""
    pixels, sources = self._pixels(images, progress)
    pixels, sources, turns = turned_copies(pixels, sources, self.register_turns)
    emb = self._require_model().embed(pixels)
    return self.add_embeddings(label, emb, sources, [pixel_hash(p) for p in pixels], turns)

  def remove(self, label):
    """Removes a label's entries; removing a type removes its sub-labels too. Returns count."""
    split_label(label)
    drop = [l == label or (('/' not in label) and label_type(l) == label) for l in self.labels]
    if not any(drop):
      raise InputError(f'label {label!r} is not registered')
    keep = np.flatnonzero(~np.array(drop))
    self.embeddings = self.embeddings[keep]
    self.labels = [self.labels[i] for i in keep]
    self.sources = [self.sources[i] for i in keep]
    self.hashes = [self.hashes[i] for i in keep]
    self.turns = [self.turns[i] for i in keep]
    self._index = None
    return int(sum(drop))

  # ---- classification ----
  def index(self, backend='auto'):
    if self._index is None or (backend != 'auto' and self._index.backend != backend):
      self._index = EntryIndex(self.embeddings, backend)
    return self._index

  def classify_embeddings(self, embeddings, top_k=1, restrict_type=None, threshold=None,
                          uncertainties=None, unsure_threshold=None):
    """Normalised query embeddings [Q, D] -> one answer dict per query (see module doc).

    restrict_type: only entries of that type (the type itself and its sub-labels) compete.
    threshold: overrides the calibrated one; None and uncalibrated means everything passes.
    uncertainties: one number per query (models/uncertainty.py), reported in each answer; above
    unsure_threshold the answer is UNSURE whatever the score.
    """
    if not len(self):
      raise InputError('registry is empty: register some types first')
    queries = np.asarray(embeddings, np.float32).reshape(-1, self.embed_dim)
    mask = None
    if restrict_type is not None:
      mask = np.array([label_type(l) == restrict_type for l in self.labels])
      if not mask.any():
        raise InputError(f'type {restrict_type!r} is not registered')
    threshold = self.threshold if threshold is None else threshold
    labels = np.array(self.labels, dtype=object)
    turns = np.asarray(self.turns, np.int64)
    index = self.index()
    n_candidates = int(mask.sum()) if mask is not None else len(self)
    k_entries = min(n_candidates, max(top_k * 8, 16))
    while True:
      scores, idx = index.search(queries, k_entries, mask)
      answers = [self._answer(s, i, labels, turns, top_k, threshold)
                 for s, i in zip(scores, idx)]
      short = any(len(a['top_k']) < top_k for a in answers)
      if not short or k_entries >= n_candidates:
        if uncertainties is not None:
          for a, u in zip(answers, np.asarray(uncertainties, np.float64)):
            a['uncertainty'] = float(u)
            a['unsure'] = bool(unsure_threshold is not None and u > unsure_threshold)
            if a['unsure']:
              a.update(label=UNSURE, type=None, sub_label=None, accepted=False)
        return answers
      k_entries = min(n_candidates, k_entries * 4)

  def _answer(self, scores, idx, labels, turns, top_k, threshold):
    best = []
    for s, i in zip(scores, idx):
      if i < 0:
        break
      label = labels[i]
      if all(b['label'] != label for b in best):
        best.append({'label': label, 'type': label_type(label), 'score': float(s),
                     'turn': int(turns[i])})
        if len(best) == top_k:
          break
    top = best[0]
    accepted = threshold is None or top['score'] > threshold  # strictly, as calibrated
    _, sub = split_label(top['label'])
    return {'label': top['label'] if accepted else UNKNOWN,
            'type': top['type'] if accepted else None,
            'sub_label': sub if accepted else None,
            'score': top['score'], 'accepted': bool(accepted), 'nearest': top['label'],
            'turn': top['turn'], 'threshold': threshold, 'top_k': best}

  def classify(self, images, top_k=1, restrict_type=None, threshold=None, progress=None):
    pixels, _ = self._pixels(images, progress)
    model = self._require_model()
    emb, log_var = model.embed_with_uncertainty(pixels)
    return self.classify_embeddings(
        emb, top_k, restrict_type, threshold, *self.uncertainty_args(model, log_var))

  def uncertainty_args(self, model, log_var):
    """(uncertainties, unsure_threshold) for classify_embeddings: the capture uncertainties when
    the model has a head; the unsure threshold only when it was calibrated with that head."""
    if log_var is None:
      return None, None
    unc = capture_uncertainty(log_var)
    if self.calibration.get('uncertainty_fingerprint') == model.uncertainty_fingerprint:
      return unc, self.calibration.get('unsure_threshold')
    return unc, None

  # ---- persistence ----
  def metadata(self):
    meta = {'format_version': FORMAT_VERSION, 'fingerprint': self.fingerprint,
            'embed_dim': self.embed_dim, 'preprocessing': self.preprocessing,
            'threshold': self.threshold, 'calibration': self.calibration,
            'labels': self.labels, 'sources': self.sources, 'hashes': self.hashes,
            'turns': self.turns, 'register_turns': self.register_turns}
    if self.calibration_set is not None:
      meta['calibration_types'] = list(self.calibration_set[1])
      meta['calibration_hashes'] = list(self.calibration_set[2])
    return meta

  def mark_calibrated(self):
    """Records which entries the threshold was calibrated against (calibration_check)."""
    self.calibration['entries_digest'] = self._entries_digest()

  def save(self, path):
    """Replaces the file whole (file_io: atomic, mode and symlink target kept). Callers that
    read, change and save (inference/cli.py) hold file_io.locked(path) around all three."""
    meta = np.frombuffer(json.dumps(self.metadata()).encode('utf-8'), np.uint8)
    buf = io.BytesIO()
    arrays = {'embeddings': self.embeddings, 'meta_json': meta}
    if self.calibration_set is not None:
      arrays['calibration_embeddings'] = np.asarray(self.calibration_set[0], np.float32)
    np.savez(buf, **arrays)
    file_io.write_bytes_atomic(path, buf.getvalue())

  @classmethod
  def load(cls, path, model=None):
    """Reads and checks a registry: every problem is one InputError naming the file."""
    arrays = file_io.read_npz(path, ('embeddings', 'meta_json'), 'registry file',
                              optional=('calibration_embeddings',))
    try:
      meta = json.loads(arrays['meta_json'].tobytes().decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise CorruptFileError(f'{path}: registry metadata is not valid JSON ({e})') from None
    reg = cls._from_checked(path, arrays['embeddings'], meta,
                            arrays.get('calibration_embeddings'))
    if model is not None:
      reg.attach_model(model)
    return reg

  @classmethod
  def _from_checked(cls, path, embeddings, meta, calibration_embeddings=None):
    """A Registry from stored arrays, after checking every field a hand edit could break."""
    def bad(what):
      return CorruptFileError(f'{path}: corrupt registry: {what}')
    if not isinstance(meta, dict):
      raise bad(f'metadata is a {type(meta).__name__}, not a JSON object')
    if meta.get('format_version') != FORMAT_VERSION:
      raise bad(f'format {meta.get("format_version")!r}, expected {FORMAT_VERSION}')
    kinds = {'fingerprint': str, 'embed_dim': int, 'preprocessing': dict, 'labels': list,
             'sources': list, 'hashes': list}
    for key, kind in kinds.items():
      if key not in meta:
        raise bad(f'metadata lacks {key!r}')
      if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
        raise bad(f'{key!r} is a {type(meta[key]).__name__}, expected {kind.__name__}')
    if meta['embed_dim'] <= 0:
      raise bad(f'embed_dim {meta["embed_dim"]} is not positive')
    if not isinstance(meta['preprocessing'].get('image_size'), int):
      raise bad('preprocessing.image_size is not an integer')
    n, dim = len(meta['labels']), meta['embed_dim']
    for key in ('labels', 'sources', 'hashes'):
      if len(meta[key]) != n or not all(isinstance(v, str) for v in meta[key]):
        raise bad(f'{key!r} must be {n} strings')
    for label in meta['labels']:
      try:
        split_label(label)
      except InputError as e:
        raise bad(f'stored {e}') from None
    if embeddings.dtype != np.float32 or embeddings.shape != (n, dim):
      raise bad(f'embeddings are {embeddings.dtype} {list(embeddings.shape)}, expected float32 '
                f'[{n}, {dim}] for {n} labels')
    if not np.isfinite(embeddings).all():
      rows = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
      raise bad(f'{len(rows)} embedding(s) hold NaN or Inf (first: entry {rows[0]}, label '
                f'{meta["labels"][rows[0]]!r}); remove that label and register it again')
    threshold = meta.get('threshold')
    if threshold is not None and (not isinstance(threshold, (int, float))
                                  or isinstance(threshold, bool) or not math.isfinite(threshold)):
      raise bad(f'threshold {threshold!r} is not a finite number')
    calibration = meta.get('calibration', {})
    if not isinstance(calibration, dict):
      raise bad(f'calibration is a {type(calibration).__name__}, expected dict')
    # Registries written before turns existed hold upright entries only.
    turns, register_turns = meta.get('turns', [0] * n), meta.get('register_turns', [])
    if not (isinstance(turns, list) and len(turns) == n
            and all(t in (0,) + TURNS and type(t) is int for t in turns)):
      raise bad(f"'turns' must be {n} of 0, {', '.join(map(str, TURNS))}")
    if not (isinstance(register_turns, list)
            and all(t in TURNS and type(t) is int for t in register_turns)):
      raise bad(f"'register_turns' must be a list of {', '.join(map(str, TURNS))}")
    reg = cls(meta['fingerprint'], dim, meta['preprocessing'])
    reg.embeddings, reg.labels = embeddings, list(meta['labels'])
    reg.sources, reg.hashes = list(meta['sources']), list(meta['hashes'])
    reg.threshold, reg.calibration = threshold, calibration
    reg.turns, reg.register_turns = list(turns), sorted(register_turns)
    if calibration_embeddings is not None:
      types, hashes = meta.get('calibration_types'), meta.get('calibration_hashes')
      m = len(calibration_embeddings)
      if not (isinstance(types, list) and isinstance(hashes, list) and len(types) == m
              and len(hashes) == m and all(isinstance(v, str) for v in types + hashes)):
        raise bad(f'calibration_types / calibration_hashes must be {m} strings each')
      if (calibration_embeddings.dtype != np.float32 or calibration_embeddings.ndim != 2
          or calibration_embeddings.shape[1] != dim
          or not np.isfinite(calibration_embeddings).all()):
        raise bad(f'calibration_embeddings are {calibration_embeddings.dtype} '
                  f'{list(calibration_embeddings.shape)}, expected finite float32 [{m}, {dim}]')
      reg.calibration_set = (calibration_embeddings, types, hashes)
    return reg

  # ---- helpers ----
  def _require_model(self):
    if self.model is None:
      raise InputError('this registry has no model attached (Registry.load(path, model))')
    return self.model

  def _pixels(self, images, progress=None):
    if isinstance(images, np.ndarray):
      return images, [''] * len(images)
    loaded = images_lib.load_images(list(images), self.preprocessing, progress=progress)
    return loaded.images, loaded.paths
