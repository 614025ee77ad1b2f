"""Rendered paperwork: document templates (the classes) and their filled-in copies.

A *template* is one document type of one issuer: a government form, a contract, a letter on a
letterhead, an invoice, a bank statement, a receipt, a certificate, an ID card or a passport
data page, in Latin, Cyrillic or CJK script, portrait or landscape, one or two columns, with real
fonts (input_pipeline/fonts.py). Its *copies* (variants) keep the layout and every printed label
and change what a filer adds: typed or handwritten values, ticks, stamps, signatures, notes, the
number of items on a receipt. Copy 0 of a form is the blank form.

Hard negatives by construction: templates come in groups of `ISSUER_GROUP` that share an issuer
(letterhead, logo, colours, fonts, script) and differ in the document: "insurer A's claim form vs
insurer A's policy", as in the real world.

Everything is a pure function of (seed, template id, copy): `render(template_id, copy, seed,
size)` gives the same pixels on every host and every run.
"""
import math

import numpy as np
from PIL import Image, ImageDraw

from input_pipeline import fonts as F

ISSUER_GROUP = 3
KINDS = ('form', 'gov_form', 'contract', 'letter', 'invoice', 'statement', 'receipt',
         'certificate', 'id_card', 'passport')
KIND_P = (0.2, 0.16, 0.1, 0.1, 0.1, 0.07, 0.09, 0.06, 0.07, 0.05)
BLANK_FIRST = ('form', 'gov_form', 'certificate')  # copy 0 is the unfilled document
RENDER_SCALE = 3  # pages are drawn at 3x the stored size and downsampled (anti-aliased text)

INKS = ((20, 20, 20), (35, 35, 40), (10, 10, 10), (25, 30, 90), (40, 40, 40))
PEN_INKS = ((20, 30, 140), (15, 15, 15), (30, 40, 110), (120, 20, 30))
STAMP_INKS = ((170, 30, 40), (40, 60, 170), (110, 40, 140), (30, 110, 60))


def _rgb(rng, lo, hi):
  return tuple(int(v) for v in rng.integers(lo, hi, 3))


def issuer_style(issuer_id, seed):
  rng = np.random.default_rng([seed, issuer_id, 11])
  script = ('latin', 'cyrillic', 'cjk')[int(rng.choice(3, p=(0.72, 0.14, 0.14)))]
  cyr = script == 'cyrillic'
  body_role = 'serif' if rng.random() < 0.45 else 'sans'
  paper = ((255, 255, 255) if rng.random() < 0.55 else
           tuple(int(255 - rng.integers(0, 14) - (c * rng.integers(0, 6))) for c in (0, 1, 2)))
  if rng.random() < 0.08:  # tinted stationery
    paper = _rgb(rng, 215, 250)
  return dict(
      script=script,
      body=F.faces('cjk')[0] if script == 'cjk' else F.faces(body_role, cyr)[
          rng.integers(len(F.faces(body_role, cyr)))],
      head=F.faces('cjk')[0] if script == 'cjk' else F.faces(
          ('sans', 'serif')[int(rng.integers(2))], cyr)[0],
      mono=F.faces('mono', cyr)[rng.integers(len(F.faces('mono', cyr)))],
      name=F.words(rng, script, rng.integers(1, 4)).upper() if script != 'cjk' else F.words(
          rng, 'cjk', 2),
      address=f'{F.number(rng, 3)} {F.words(rng, script, 2, True)}, {F.number(rng, 5)}',
      accent=_rgb(rng, 0, 200),
      ink=INKS[rng.integers(len(INKS))],
      paper=paper,
      logo=int(rng.integers(6)),
      letterhead=int(rng.integers(4)),  # 0 left logo, 1 right logo, 2 centred, 3 colour band
      head_bold=rng.random() < 0.7,
  )


def template_style(template_id, seed):
  """Everything the copies of a template share."""
  rng = np.random.default_rng([seed, template_id, 0])
  st = dict(issuer_style(template_id // ISSUER_GROUP, seed))
  kind = KINDS[int(rng.choice(len(KINDS), p=KIND_P))]
  landscape = {'certificate': 0.7, 'id_card': 1.0, 'passport': 1.0, 'statement': 0.15,
               'form': 0.1, 'gov_form': 0.05}.get(kind, 0.0)
  st.update(kind=kind, landscape=rng.random() < landscape, layout_seed=int(rng.integers(2**31)),
            two_columns=kind in ('contract', 'letter') and rng.random() < 0.3,
            text_px=rng.uniform(0.011, 0.017), margin=rng.uniform(0.05, 0.1),
            ink=st['ink'] if rng.random() < 0.8 else INKS[rng.integers(len(INKS))])
  return st


def page_aspect(st, copy_rng):
  """height / width of the page."""
  k = st['kind']
  if k in ('id_card',):
    return 54.0 / 85.6
  if k == 'passport':
    return 88.0 / 125.0
  if k == 'receipt':
    return copy_rng.uniform(1.8, 3.6)  # the number of items sets the length
  a = 297.0 / 210.0
  return 1.0 / a if st['landscape'] else a


# ---------------------------------------------------------------------------------------------
# Drawing primitives (PIL at RENDER_SCALE x the stored size).
# ---------------------------------------------------------------------------------------------

class Page:
  """A PIL page with a cursor; `filled` says whether values are written in."""

  def __init__(self, st, w, h, copy_rng, filled):
    self.st, self.w, self.h, self.rng, self.filled = st, w, h, copy_rng, filled
    self.img = Image.new('RGB', (w, h), st['paper'])
    self.d = ImageDraw.Draw(self.img)
    self.m = int(st['margin'] * w)
    self.x0, self.x1 = self.m, w - self.m
    self.y = self.m
    self.px = max(5, int(st['text_px'] * max(w, h)))
    self.script = st['script']

  def font(self, role='body', scale=1.0, bold=False):
    path = {'body': self.st['body'], 'head': self.st['head'], 'mono': self.st['mono']}.get(role, role)
    return F.load(path, self.px * scale, bold)

  def text(self, xy, s, font, fill=None, anchor='la'):
    self.d.text(xy, s, font=font, fill=fill or self.st['ink'], anchor=anchor)

  def room(self, h):
    return self.y + h < self.h - self.m

  def hand(self, xy, s, scale=1.0):
    """Handwriting: a handwriting face (or the body face for CJK), pen ink, slight baseline tilt."""
    if self.script == 'cjk':
      font = F.load(F.faces('cjk')[0], self.px * scale * 1.1)
    else:
      hands = F.faces('hand', self.script == 'cyrillic')
      font = F.load(hands[self.rng.integers(len(hands))], self.px * scale * 1.5)
    ink = PEN_INKS[self.rng.integers(len(PEN_INKS))]
    x, y = xy
    self.d.text((x + self.rng.integers(0, self.px), y - self.px * 0.3), s, font=font, fill=ink)

  def value(self, xy, width, scale=1.0):
    """A filled-in value: typed (mono or body) or handwritten, as long as `width` allows."""
    if not self.filled or self.rng.random() < 0.15:  # some fields stay empty on a filled copy
      return
    s = F.value(self.rng, self.script)
    if self.rng.random() < 0.35:
      self.hand(xy, s, scale)
      return
    font = self.font('mono' if self.rng.random() < 0.5 else 'body', scale)
    while s and font.getlength(s) > width:
      s = s[:-1]
    self.text(xy, s, font)


def logo(p, cx, cy, r, st):
  d, c, kind = p.d, st['accent'], st['logo']
  if kind == 0:
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c)
    d.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=st['paper'])
  elif kind == 1:
    d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=c)
    d.text((cx, cy), st['name'][:1], font=p.font('head', 2.2 * r / p.px, True),
           fill=st['paper'], anchor='mm')
  elif kind == 2:
    pts = [(cx + (r if i % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + i * math.pi / 5),
            cy + (r if i % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + i * math.pi / 5))
           for i in range(10)]
    d.polygon(pts, fill=c)
  elif kind == 3:
    d.polygon([(cx - r, cy + r), (cx, cy - r), (cx + r, cy + r)], fill=c)
    d.polygon([(cx - r / 2, cy + r), (cx, cy), (cx + r / 2, cy + r)], fill=st['paper'])
  elif kind == 4:  # government seal
    d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=c, width=max(1, r // 8))
    d.ellipse([cx - r * 0.7, cy - r * 0.7, cx + r * 0.7, cy + r * 0.7], outline=c, width=max(1, r // 12))
    d.regular_polygon((cx, cy, r * 0.4), 5, fill=c)
  else:
    for i in range(3):
      d.rectangle([cx - r + i * r * 0.7, cy - r + i * r * 0.5, cx - r + i * r * 0.7 + r * 0.55, cy + r],
                  fill=c)


def letterhead(p):
  st, lay = p.st, p.st['letterhead']
  r = int(p.px * 2.2)
  if lay == 3:  # colour band across the top
    band = int(r * 2.6)
    p.d.rectangle([0, 0, p.w, band], fill=st['accent'])
    p.text((p.x0, band // 2), st['name'], p.font('head', 2.0, st['head_bold']), st['paper'], 'lm')
    p.y = band + p.px
  else:
    cx = {0: p.x0 + r, 1: p.x1 - r, 2: p.w // 2}[lay]
    logo(p, cx, p.y + r, r, st)
    name_font = p.font('head', 1.9, st['head_bold'])
    if lay == 2:
      p.text((p.w // 2, p.y + 2 * r + p.px), st['name'], name_font, st['accent'], 'ma')
      p.text((p.w // 2, p.y + 2 * r + 3.4 * p.px), st['address'], p.font('body', 0.8), None, 'ma')
      p.y += 2 * r + 5 * p.px
    else:
      x, anchor = (p.x0 + 2.6 * r, 'la') if lay == 0 else (p.x1 - 2.6 * r, 'ra')
      p.text((x, p.y + 0.2 * r), st['name'], name_font, st['accent'], anchor)
      p.text((x, p.y + 0.2 * r + 2.4 * p.px), st['address'], p.font('body', 0.8), None, anchor)
      p.y += 2 * r + 1.5 * p.px
  if p.rng_layout.random() < 0.6:
    p.d.line([p.x0, p.y, p.x1, p.y], fill=st['accent'], width=max(1, p.px // 5))
    p.y += p.px


def title(p, lr, size=1.9):
  s = F.title(lr, p.script)
  align = lr.integers(3)
  font = p.font('head', size, True)
  x, anchor = ((p.x0, 'la'), (p.w // 2, 'ma'), (p.x1, 'ra'))[align]
  if lr.random() < 0.25:  # boxed or shaded title
    tw = font.getlength(s)
    bx0 = {0: p.x0, 1: p.w // 2 - tw / 2, 2: p.x1 - tw}[align] - p.px * 0.5
    p.d.rectangle([bx0, p.y - p.px * 0.4, bx0 + tw + p.px, p.y + size * p.px * 1.3],
                  outline=p.st['ink'], width=max(1, p.px // 6))
  p.text((x, p.y), s, font, None, anchor)
  p.y += int(size * p.px * 2.0)


def section(p, lr):
  h = int(p.px * 1.7)
  shade = tuple(int(c * 0.15 + 0.85 * 205) for c in p.st['accent']) if lr.random() < 0.5 else (
      200, 200, 200)
  if lr.random() < 0.6:
    p.d.rectangle([p.x0, p.y, p.x1, p.y + h], fill=shade if lr.random() < 0.7 else p.st['ink'])
  else:
    p.d.line([p.x0, p.y + h, p.x1, p.y + h], fill=p.st['ink'], width=max(1, p.px // 4))
  label = (f'Part {"I II III IV V".split()[lr.integers(5)]} ' if p.script == 'latin' else '') + \
      F.words(lr, p.script, lr.integers(2, 5), True)
  p.text((p.x0 + p.px * 0.4, p.y + h / 2), label, p.font('head', 1.0, True), None, 'lm')
  p.y += h + int(p.px * 0.8)


def fields(p, lr):
  """Rows of labelled fields: label left or above, an underline, a box or character combs."""
  rows = int(lr.integers(2, 6))
  above = lr.random() < 0.5
  style = int(lr.integers(3))  # 0 underline, 1 box, 2 box grid (adjacent cells)
  row_h = int(p.px * (3.0 if above else 2.2))
  for _ in range(rows):
    if not p.room(row_h):
      return
    n = int(lr.integers(1, 4))
    cuts = np.sort(lr.uniform(0.15, 0.85, n - 1)) if n > 1 else np.array([])
    edges = np.concatenate([[0.0], cuts, [1.0]]) * (p.x1 - p.x0) + p.x0
    for a, b in zip(edges[:-1], edges[1:]):
      label = F.words(lr, p.script, lr.integers(1, 4), True) + ('' if above else ':')
      font = p.font('body', 0.85 if above else 1.0)
      if above:
        p.text((a + p.px * 0.3, p.y), label, font)
        vx, vy, vw = a + p.px * 0.3, p.y + p.px * 1.2, b - a - p.px
      else:
        p.text((a, p.y + p.px * 0.2), label, font)
        vx = a + font.getlength(label) + p.px * 0.5
        vy, vw = p.y, b - vx - p.px * 0.5
      if vw < p.px * 2:  # the label took the field's width: a label-only cell
        vx, vw = a, b - a
      if style == 0:
        p.d.line([vx, p.y + row_h - p.px * 0.5, vx + vw, p.y + row_h - p.px * 0.5],
                 fill=p.st['ink'], width=1)
      elif style == 1:
        p.d.rectangle([vx - p.px * 0.2, vy - p.px * 0.1, vx + vw, p.y + row_h - p.px * 0.3],
                      outline=p.st['ink'], width=1)
      else:
        p.d.rectangle([a, p.y, b, p.y + row_h], outline=p.st['ink'], width=1)
      p.value((vx, vy + p.px * 0.1), vw)
    p.y += row_h + (int(p.px * 0.5) if style != 2 else 0)
  p.y += p.px


def checks(p, lr):
  n = int(lr.integers(2, 6))
  box = int(p.px * 0.9)
  x = p.x0
  p.text((x, p.y), F.words(lr, p.script, lr.integers(2, 5), True), p.font('body'))
  p.y += int(p.px * 1.6)
  for i in range(n):
    label = F.words(lr, p.script, lr.integers(1, 3), True)
    w = box + p.px + p.font('body').getlength(label) + 2 * p.px
    if x + w > p.x1:
      x = p.x0
      p.y += int(p.px * 1.6)
    p.d.rectangle([x, p.y, x + box, p.y + box], outline=p.st['ink'], width=max(1, p.px // 8))
    if p.filled and p.rng.random() < 0.35:
      ink = PEN_INKS[p.rng.integers(len(PEN_INKS))]
      p.d.line([x, p.y, x + box, p.y + box], fill=ink, width=max(1, p.px // 5))
      p.d.line([x, p.y + box, x + box, p.y], fill=ink, width=max(1, p.px // 5))
    p.text((x + box + p.px * 0.5, p.y - p.px * 0.1), label, p.font('body'))
    x += w
  p.y += int(p.px * 2.2)


def table(p, lr, rows=None, numeric_last=True):
  cols = int(lr.integers(2, 6))
  rows = rows or int(lr.integers(3, 12))
  row_h = int(p.px * 1.7)
  fr = lr.uniform(0.5, 2.0, cols)
  edges = np.concatenate([[0], np.cumsum(fr / fr.sum())]) * (p.x1 - p.x0) + p.x0
  grid = lr.random() < 0.6
  header_fill = lr.random() < 0.6
  top = p.y
  if header_fill:
    p.d.rectangle([p.x0, p.y, p.x1, p.y + row_h],
                  fill=tuple(int(0.3 * c + 0.7 * 225) for c in p.st['accent']))
  for c in range(cols):
    p.text((edges[c] + p.px * 0.3, p.y + row_h / 2), F.words(lr, p.script, 1, True),
           p.font('body', 0.9, True), None, 'lm')
  p.y += row_h
  for r in range(rows):
    if not p.room(row_h):
      break
    if grid or r == 0:
      p.d.line([p.x0, p.y, p.x1, p.y], fill=p.st['ink'], width=1)
    for c in range(cols):
      if p.filled and p.rng.random() < 0.85:
        w = edges[c + 1] - edges[c] - p.px * 0.6
        s = F.money(p.rng) if (numeric_last and c == cols - 1) else F.value(p.rng, p.script)
        font = p.font('body', 0.9)
        while s and font.getlength(s) > w:
          s = s[:-1]
        p.text((edges[c] + p.px * 0.3, p.y + row_h / 2), s, font, None, 'lm')
    p.y += row_h
  p.d.line([p.x0, p.y, p.x1, p.y], fill=p.st['ink'], width=1)
  if grid:
    for e in edges:
      p.d.line([e, top, e, p.y], fill=p.st['ink'], width=1)
    p.d.rectangle([p.x0, top, p.x1, p.y], outline=p.st['ink'], width=max(1, p.px // 6))
  p.y += p.px


def paragraphs(p, lr, n, numbered, fixed):
  """Running text; `fixed` text is the template's (a contract's clauses), else the copy's."""
  src = lr if fixed else p.rng
  cols = 2 if p.st['two_columns'] else 1
  gap = p.px * 2
  col_w = (p.x1 - p.x0 - gap * (cols - 1)) / cols
  font = p.font('body')
  line_h = int(p.px * 1.45)
  col, y0 = 0, p.y
  for i in range(n):
    x0 = p.x0 + col * (col_w + gap)
    s = (f'{i + 1}. ' if numbered else '') + F.words(src, p.script, src.integers(15, 60), True)
    tokens = list(s) if p.script == 'cjk' else s.split(' ')
    sep = '' if p.script == 'cjk' else ' '
    line = ''
    for t in tokens:
      trial = (line + sep + t) if line else t
      if font.getlength(trial) > col_w:
        p.text((x0, p.y), line, font)
        p.y += line_h
        line = t
        if not p.room(line_h * 3):
          if col + 1 < cols:
            col, p.y = col + 1, y0
            x0 = p.x0 + col * (col_w + gap)
          else:
            return
      else:
        line = trial
    p.text((x0, p.y), line, font)
    p.y += int(line_h * 1.6)


def signatures(p, lr):
  n = int(lr.integers(1, 3))
  w = (p.x1 - p.x0) / n
  y = min(p.y + p.px * 3, p.h - p.m - p.px * 3)
  for i in range(n):
    x = p.x0 + i * w
    p.d.line([x, y, x + w * 0.8, y], fill=p.st['ink'], width=1)
    p.text((x, y + p.px * 0.3), F.words(lr, p.script, lr.integers(1, 3), True), p.font('body', 0.8))
    if p.filled and p.rng.random() < 0.8:
      scribble(p, x + w * 0.05, y - p.px * 2.2, w * 0.5, p.px * 2)
  p.y = y + p.px * 2


def scribble(p, x, y, w, h):
  t = np.linspace(0, 1, 60)
  f = p.rng.uniform(2, 6)
  xs = x + w * t + h * 0.3 * np.sin(t * f * 7)
  ys = y + h * (0.5 + 0.4 * np.sin(t * f * 3 + p.rng.uniform(0, 6)) * np.cos(t * 5))
  p.d.line(list(zip(xs, ys)), fill=PEN_INKS[p.rng.integers(len(PEN_INKS))], width=max(1, p.px // 6))


def stamp(p):
  """An inked stamp over the page (a copy's, not the template's)."""
  r = int(p.px * p.rng.uniform(3, 6))
  layer = Image.new('L', (4 * r, 4 * r), 0)
  d = ImageDraw.Draw(layer)
  c = 2 * r
  if p.rng.random() < 0.5:
    d.ellipse([c - r, c - r, c + r, c + r], outline=255, width=max(1, r // 10))
    d.ellipse([c - r * 0.7, c - r * 0.7, c + r * 0.7, c + r * 0.7], outline=255, width=max(1, r // 14))
  else:
    d.rectangle([c - 1.5 * r, c - r * 0.6, c + 1.5 * r, c + r * 0.6], outline=255, width=max(1, r // 10))
  d.text((c, c), F.words(p.rng, p.script, 1).upper()[:10], font=p.font('head', r / p.px * 0.6, True),
         fill=255, anchor='mm')
  layer = layer.rotate(p.rng.uniform(-35, 35))
  alpha = layer.point(lambda v: int(v * p.rng.uniform(0.55, 0.9)))
  ink = Image.new('RGB', layer.size, STAMP_INKS[p.rng.integers(len(STAMP_INKS))])
  at = (int(p.rng.uniform(0, max(1, p.w - 4 * r))), int(p.rng.uniform(p.h * 0.2, max(p.h * 0.2 + 1, p.h - 4 * r))))
  p.img.paste(ink, at, alpha)


def barcode(p, x, y, w, h):
  xs = x
  while xs < x + w:
    bw = int(p.rng.integers(1, 4))
    if p.rng.random() < 0.55:
      p.d.rectangle([xs, y, xs + bw - 1, y + h], fill=(0, 0, 0))
    xs += bw


def photo(p, x, y, w, h):
  p.d.rectangle([x, y, x + w, y + h], fill=_rgb(p.rng, 150, 235))
  skin = _rgb(p.rng, 90, 230)
  p.d.ellipse([x + w * 0.28, y + h * 0.12, x + w * 0.72, y + h * 0.62], fill=skin)
  p.d.ellipse([x + w * 0.08, y + h * 0.62, x + w * 0.92, y + h * 1.3], fill=_rgb(p.rng, 10, 180))
  p.d.rectangle([x, y + h, x + w, y + h + 2], fill=p.st['paper'])


# ---------------------------------------------------------------------------------------------
# Page kinds.
# ---------------------------------------------------------------------------------------------

def _body_blocks(p, lr, kinds, count):
  for _ in range(count):
    if not p.room(p.px * 6):
      break
    k = kinds[int(lr.integers(len(kinds)))]
    {'section': section, 'fields': fields, 'checks': checks, 'table': table}[k](p, lr)


def draw_kind(p, lr):
  k = p.st['kind']
  if k in ('form', 'gov_form'):
    if k == 'gov_form':
      logo(p, p.x0 + p.px * 2, p.y + p.px * 2, p.px * 2, dict(p.st, logo=4))
      p.text((p.x0 + p.px * 5, p.y), F.words(lr, p.script, 3, True).upper(), p.font('head', 1.0, True))
      p.text((p.x1, p.y), f'Form {F.number(lr, 2)}-{F.number(lr, 3)}', p.font('head', 1.3, True),
             None, 'ra')
      p.text((p.x1, p.y + p.px * 1.8), f'OMB No. {F.number(lr, 4)}-{F.number(lr, 4)}',
             p.font('body', 0.7), None, 'ra')
      p.y += p.px * 4.5
      p.d.line([p.x0, p.y, p.x1, p.y], fill=p.st['ink'], width=max(1, p.px // 3))
      p.y += p.px
    else:
      letterhead(p)
    title(p, lr)
    _body_blocks(p, lr, ('section', 'fields', 'fields', 'checks', 'table'), int(lr.integers(4, 10)))
    signatures(p, lr)
  elif k == 'contract':
    title(p, lr, 2.0)
    paragraphs(p, lr, int(lr.integers(1, 2)), False, True)
    paragraphs(p, lr, int(lr.integers(4, 12)), True, True)
    signatures(p, lr)
  elif k == 'letter':
    letterhead(p)
    p.text((p.x1, p.y), F.date(p.rng), p.font('body'), None, 'ra')
    p.y += p.px * 2
    for _ in range(3):
      p.text((p.x0, p.y), F.person(p.rng, p.script) if _ == 0 else F.words(p.rng, p.script, 3, True),
             p.font('body'))
      p.y += int(p.px * 1.4)
    p.y += p.px * 2
    paragraphs(p, lr, int(p.rng.integers(2, 6)), False, False)
    signatures(p, lr)
  elif k in ('invoice', 'statement'):
    letterhead(p)
    title(p, lr, 2.2)
    top = p.y
    for i in range(int(lr.integers(2, 5))):  # meta fields on the right
      p.text((p.x1 - p.px * 16, top + i * p.px * 1.5), F.words(lr, p.script, 1, True) + ':',
             p.font('body', 0.9, True))
      if p.filled:
        p.text((p.x1, top + i * p.px * 1.5), F.value(p.rng, p.script)[:14], p.font('body', 0.9), None, 'ra')
    p.text((p.x0, top), F.words(lr, p.script, 2, True) + ':', p.font('body', 0.9, True))
    for i in range(3):
      if p.filled:
        p.text((p.x0, top + (i + 1) * p.px * 1.4), F.words(p.rng, p.script, 3, True), p.font('body', 0.9))
    p.y = top + p.px * 7
    table(p, lr, rows=int(lr.integers(5, 18) if k == 'statement' else lr.integers(3, 9)))
    for i in range(int(lr.integers(1, 4))):
      p.text((p.x1 - p.px * 14, p.y), F.words(lr, p.script, 1, True).upper(), p.font('body', 1.0, True))
      if p.filled:
        p.text((p.x1, p.y), F.money(p.rng), p.font('mono'), None, 'ra')
      p.y += int(p.px * 1.6)
    p.y = max(p.y, p.h - p.m - p.px * 3)
    p.text((p.w // 2, p.y), F.words(lr, p.script, 8), p.font('body', 0.7), None, 'ma')
  elif k == 'receipt':
    draw_receipt(p, lr)
  elif k == 'certificate':
    draw_certificate(p, lr)
  else:
    draw_card(p, lr)


def draw_receipt(p, lr):
  mono = p.font('mono', 1.1)
  cx = p.w // 2
  if lr.random() < 0.4:
    logo(p, cx, p.y + p.px * 2, p.px * 2, p.st)
    p.y += p.px * 5
  p.text((cx, p.y), p.st['name'], p.font('mono', 1.5, True), None, 'ma')
  p.y += p.px * 2.2
  for _ in range(int(lr.integers(1, 4))):
    p.text((cx, p.y), F.words(lr, p.script, 3).upper()[:30], mono, None, 'ma')
    p.y += int(p.px * 1.5)
  dash = '-' * 60
  rule = lambda: (p.text((p.x0, p.y), dash, mono), setattr(p, 'y', p.y + int(p.px * 1.5)))
  rule()
  for _ in range(2):
    p.text((p.x0, p.y), f'{F.words(lr, p.script, 1).upper()}: {F.number(p.rng, 6)}', mono)
    p.y += int(p.px * 1.5)
  rule()
  while p.room(p.px * 12):
    p.text((p.x0, p.y), F.words(p.rng, p.script, p.rng.integers(1, 3)).upper()[:18], mono)
    p.text((p.x1, p.y), F.money(p.rng), mono, None, 'ra')
    p.y += int(p.px * 1.5)
  rule()
  for label in ('TOTAL', 'CASH', 'CHANGE')[:int(lr.integers(1, 4))]:
    p.text((p.x0, p.y), label, p.font('mono', 1.2, True))
    p.text((p.x1, p.y), F.money(p.rng), p.font('mono', 1.2, True), None, 'ra')
    p.y += int(p.px * 1.7)
  p.text((cx, p.y + p.px), F.words(lr, p.script, 3).upper(), mono, None, 'ma')
  barcode(p, p.x0 + p.px * 2, p.y + p.px * 3.5, p.x1 - p.x0 - p.px * 4, p.px * 3)


def draw_certificate(p, lr):
  c = p.st['accent']
  for i, wd in enumerate((max(2, p.px // 2), 1)):
    o = p.m * 0.4 + i * p.px * 0.8
    p.d.rectangle([o, o, p.w - o, p.h - o], outline=c, width=wd)
  p.y = p.m + p.px * 2
  logo(p, p.w // 2, p.y + p.px * 2, p.px * 2, p.st)
  p.y += p.px * 5
  font = p.font('head', 3.0, True)
  p.text((p.w // 2, p.y), F.title(lr, p.script), font, c, 'ma')
  p.y += p.px * 5
  p.text((p.w // 2, p.y), F.words(lr, p.script, 6, True), p.font('body', 1.1), None, 'ma')
  p.y += p.px * 3
  if p.filled:
    if p.rng.random() < 0.5:
      p.text((p.w // 2, p.y), F.person(p.rng, p.script), p.font('head', 2.2), None, 'ma')
    else:
      p.hand((p.w // 2 - p.px * 8, p.y), F.person(p.rng, p.script), 1.8)
  p.y += p.px * 3.5
  p.d.line([p.w * 0.25, p.y, p.w * 0.75, p.y], fill=p.st['ink'], width=1)
  p.y += p.px * 2
  for _ in range(2):
    p.text((p.w // 2, p.y), F.words(lr, p.script, 9, True), p.font('body'), None, 'ma')
    p.y += int(p.px * 1.6)
  p.y = p.h - p.m - p.px * 6
  signatures(p, lr)


def draw_card(p, lr):
  st = p.st
  if lr.random() < 0.7:  # guilloche background
    xs = np.arange(0, p.w, 3)
    f = lr.uniform(0.01, 0.05)
    col = tuple(int(0.25 * a + 0.75 * b) for a, b in zip(st['accent'], st['paper']))
    for k in range(0, p.h, max(4, p.h // 18)):
      p.d.line(list(zip(xs.tolist(), (k + p.px * np.sin(xs * f + k)).tolist())), fill=col, width=1)
  band = int(p.h * lr.uniform(0.12, 0.2))
  p.d.rectangle([0, 0, p.w, band], fill=st['accent'])
  p.text((p.w // 2, band // 2), F.title(lr, p.script), p.font('head', band / p.px * 0.4, True),
         st['paper'], 'mm')
  pw = int(p.w * 0.26)
  photo_x = p.x0 if lr.random() < 0.75 else p.x1 - pw
  photo(p, photo_x, band + p.px, pw, int(pw * 1.28))
  fx0 = p.x0 + pw + p.px * 1.5 if photo_x == p.x0 else p.x0
  fx1 = p.x1 if photo_x == p.x0 else photo_x - p.px
  y = band + p.px
  mrz = st['kind'] == 'passport'
  bottom = p.h - p.m - (p.px * 4 if mrz else 0)
  while y + p.px * 2.4 < bottom:
    p.text((fx0, y), F.words(lr, p.script, lr.integers(1, 3)), p.font('body', 0.75), st['accent'])
    if p.filled:
      p.text((fx0, y + p.px * 0.9), F.value(p.rng, p.script)[:22], p.font('body', 1.0, True))
    y += int(p.px * 2.4)
  if lr.random() < 0.4 and st['kind'] == 'id_card':  # chip
    p.d.rounded_rectangle([fx1 - p.px * 4, band + p.px, fx1 - p.px, band + p.px * 3.5], p.px // 2,
                          fill=(200, 170, 80))
  if mrz:
    mono = p.font('mono', 1.05)
    for i in range(2):
      s = 'P<' + ''.join('<' if p.rng.random() < 0.3 else chr(65 + p.rng.integers(26))
                         for _ in range(40))
      p.text((p.x0, p.h - p.m - p.px * (3.2 - 1.6 * i)), s, mono)
  elif p.filled:
    scribble(p, fx0, p.h - p.m - p.px * 2.5, (fx1 - fx0) * 0.4, p.px * 2)


def render(template_id, copy, seed, size):
  """Copy `copy` of template `template_id`: (RGB uint8 [size, size, 3], box x0, y0, x1, y1).

  The page is centred in a square canvas (long side = size); outside the box is undefined.
  """
  st = template_style(template_id, seed)
  copy_rng = np.random.default_rng([seed, template_id, 2, copy])
  aspect = page_aspect(st, copy_rng)
  big = size * RENDER_SCALE
  w, h = (big, int(round(big * aspect))) if aspect < 1 else (int(round(big / aspect)), big)
  filled = not (copy == 0 and st['kind'] in BLANK_FIRST)
  p = Page(st, w, h, copy_rng, filled)
  if st['kind'] == 'receipt':
    p.px = max(5, int(w * 0.045))
  elif st['kind'] in ('id_card', 'passport'):
    p.px = max(5, int(h * 0.055))
  p.rng_layout = np.random.default_rng([seed, template_id, 3])
  draw_kind(p, np.random.default_rng([seed, template_id, 1]))
  if filled:
    if copy_rng.random() < 0.35:
      stamp(p)
    if copy_rng.random() < 0.15:  # a handwritten note in the margin
      p.hand((p.x0 + copy_rng.uniform(0, 0.5) * (p.x1 - p.x0), copy_rng.uniform(0.05, 0.95) * h),
             F.words(copy_rng, p.script, 2))
  sw, sh = max(1, round(w / RENDER_SCALE)), max(1, round(h / RENDER_SCALE))
  page = p.img.resize((sw, sh), Image.LANCZOS)
  canvas = Image.new('RGB', (size, size), (0, 0, 0))
  x0, y0 = (size - sw) // 2, (size - sh) // 2
  canvas.paste(page, (x0, y0))
  return np.asarray(canvas, np.uint8), (x0, y0, x0 + sw, y0 + sh)
