"""Fonts and words for rendered paperwork (input_pipeline/paperwork.py).

Fonts come from PyPI packages in requirements.txt (Noto, PT, IBM Plex, Roboto, handwriting faces,
Noto Sans CJK), so every machine that installs the project renders the same pages. A missing
package is one line naming what to install.
"""
import functools
import glob
import importlib.util
import os

from PIL import ImageFont

from input_pipeline import image_io

# role -> PyPI packages (import name) whose font files play that role. Each template draws its
# faces from these; Latin and Cyrillic come from every face but the CJK one, CJK from the last.
FONT_PACKAGES = {
    'sans': ('fontpkg_noto_sans', 'fontpkg_open_sans', 'fontpkg_ibm_plex_sans'),
    'serif': ('fontpkg_noto_serif', 'fontpkg_pt_serif', 'fontpkg_lora'),
    'mono': ('fontpkg_roboto_mono', 'fontpkg_ibm_plex_mono'),
    'hand': ('fontpkg_caveat', 'fontpkg_kalam'),
    'cjk': ('cvttf_NotoSansCJK_Regular',),
}
_PIP_NAMES = {
    'fontpkg_noto_sans': 'fontpkg-noto-sans', 'fontpkg_open_sans': 'fontpkg-open-sans',
    'fontpkg_ibm_plex_sans': 'fontpkg-ibm-plex-sans', 'fontpkg_noto_serif': 'fontpkg-noto-serif',
    'fontpkg_pt_serif': 'fontpkg-pt-serif', 'fontpkg_lora': 'fontpkg-lora',
    'fontpkg_roboto_mono': 'fontpkg-roboto-mono', 'fontpkg_ibm_plex_mono': 'fontpkg-ibm-plex-mono',
    'fontpkg_caveat': 'fontpkg-caveat', 'fontpkg_kalam': 'fontpkg-kalam',
    'cvttf_NotoSansCJK_Regular': 'cvttf-notosanscjk-regular',
}
# The handwriting faces have no Cyrillic in every weight: Caveat does, Kalam does not.
_NO_CYRILLIC = ('fontpkg_kalam',)


def _package_fonts(package):
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    return []
  root = list(spec.submodule_search_locations)[0]
  files = sorted(glob.glob(os.path.join(root, '**', '*.[ot]tf'), recursive=True))
  # Regular upright faces only: italics are the same design slanted, and `load` finds the bold
  # weight itself (a variable font's instance or the *-Bold file beside a *-Regular one).
  skip = ('italic', 'bold', 'thin', 'light', 'medium', 'black')
  return [f for f in files if not any(k in os.path.basename(f).lower() for k in skip)]


@functools.lru_cache(maxsize=None)
def font_files():
  """role -> tuple of (package, font file). Raises DataError naming the missing packages."""
  missing, out = [], {}
  for role, packages in FONT_PACKAGES.items():
    files = []
    for p in packages:
      found = _package_fonts(p)
      if not found:
        missing.append(_PIP_NAMES[p])
      files += [(p, f) for f in found]
    out[role] = tuple(files)
  if missing:
    raise image_io.DataError(
        f'fonts for rendered documents not installed: pip install {" ".join(missing)} '
        '(all are in requirements.txt)')
  for role, files in out.items():
    for _, f in files:
      try:
        ImageFont.truetype(f, 12)
      except OSError as e:
        raise image_io.DataError(f'font file {f} ({role}) is unreadable ({e}); reinstall its '
                                 'package') from None
  return out


def faces(role, cyrillic=False):
  files = font_files()[role]
  if cyrillic:
    files = tuple(x for x in files if x[0] not in _NO_CYRILLIC) or files
  return [f for _, f in files]


@functools.lru_cache(maxsize=4096)
def load(path, size, bold=False):
  """A PIL font at `size` px; bold picks the variable font's Bold instance or a *Bold* file."""
  size = max(4, int(size))
  if bold and 'Regular' in os.path.basename(path):
    candidate = path.replace('Regular', 'Bold')
    if os.path.exists(candidate):
      return ImageFont.truetype(candidate, size)
  font = ImageFont.truetype(path, size)
  if bold:
    try:
      names = font.get_variation_names()
      for n in names:
        if (n.decode() if isinstance(n, bytes) else n).lower() == 'bold':
          font.set_variation_by_name(n)
          break
    except (OSError, AttributeError):  # not a variable font: regular weight
      pass
  return font


# ---- Words ----
LATIN_WORDS = (
    'account agreement amount application approved address applicant authority balance bank '
    'beneficiary branch business certificate charge city claim client code company contract '
    'country credit customer date declaration department description details document due '
    'employee employer entity filing form fund government holder identification income '
    'insurance invoice issue item license limited management member name national notice '
    'number office order owner page party payment period person phone policy premium '
    'previous purchase quantity receipt record reference registration report request section '
    'service signature statement status subject summary tax telephone terms total transaction '
    'type unit value vendor year schedule annual registrant securities exchange commission '
    'foreign principal agent filer amendment part item total fee shares market trust').split()
LATIN_TITLES = (
    'APPLICATION FORM', 'INVOICE', 'STATEMENT OF ACCOUNT', 'CERTIFICATE', 'AGREEMENT',
    'REGISTRATION STATEMENT', 'NOTICE OF CHANGE', 'CLAIM FORM', 'PURCHASE ORDER', 'TAX RETURN',
    'DECLARATION', 'ANNUAL REPORT', 'AMENDMENT', 'POWER OF ATTORNEY', 'DELIVERY NOTE',
    'CERTIFICATE OF COMPLETION', 'EMPLOYMENT CONTRACT', 'LEASE AGREEMENT', 'RECEIPT',
    'MEDICAL REPORT', 'BANK STATEMENT', 'CUSTOMS DECLARATION', 'INSURANCE POLICY')
FIRST_NAMES = ('James Mary John Linda Robert Maria David Anna Michael Sarah William Olga Ahmed '
               'Chen Yuki Pierre Sofia Lucas Emma Ivan Elena Carlos Fatima Hans').split()
LAST_NAMES = ('Smith Johnson Garcia Miller Davis Martinez Lopez Wilson Anderson Taylor Thomas '
              'Moore Jackson Martin Lee Walker Young King Wright Scott Green Baker Ivanov '
              'Petrova Schmidt Rossi Dubois Tanaka Kim Nguyen').split()
CYRILLIC_WORDS = (
    'заявление договор сумма дата подпись номер адрес паспорт фамилия имя отчество организация '
    'банк счет оплата итого количество цена услуга документ справка выдан город улица дом '
    'телефон налог период основание страхование полис получатель отправитель директор печать '
    'место рождения гражданство регистрация код серия приложение раздел пункт сведения').split()
CYRILLIC_TITLES = ('ЗАЯВЛЕНИЕ', 'ДОГОВОР', 'СЧЕТ-ФАКТУРА', 'СПРАВКА', 'СВИДЕТЕЛЬСТВО',
                   'ДОВЕРЕННОСТЬ', 'АКТ', 'КВИТАНЦИЯ', 'ПРОТОКОЛ', 'ВЫПИСКА')
CJK_CHARS = ('的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之'
             '过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前'
             '所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声'
             '全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使'
             '教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑'
             '性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果'
             '亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让'
             '认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留'
             '红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李息'
             '写呢识极令黄德收脸钱党倒未持取设始版双历越史商千片容研像找友孩站广改议形委早房音火际则'
             '首单据导影失拿网香似斯专石若兵弟谁校读志飞观争究包组造落视济喜离虽坏兴')
CJK_TITLES = ('申请表', '合同', '发票', '证明书', '收据', '登记表', '声明', '报告', '通知书', '协议书')


def word(rng, script):
  if script == 'cyrillic':
    return CYRILLIC_WORDS[rng.integers(len(CYRILLIC_WORDS))]
  if script == 'cjk':
    n = int(rng.integers(2, 5))
    return ''.join(CJK_CHARS[i] for i in rng.integers(0, len(CJK_CHARS), n))
  return LATIN_WORDS[rng.integers(len(LATIN_WORDS))]


def words(rng, script, n, capitalise=False):
  sep = '' if script == 'cjk' else ' '
  out = sep.join(word(rng, script) for _ in range(max(1, int(n))))
  return out[:1].upper() + out[1:] if capitalise else out


def title(rng, script):
  pool = {'cyrillic': CYRILLIC_TITLES, 'cjk': CJK_TITLES}.get(script, LATIN_TITLES)
  return pool[rng.integers(len(pool))]


def person(rng, script):
  if script == 'cjk':
    return ''.join(CJK_CHARS[i] for i in rng.integers(0, len(CJK_CHARS), 3))
  if script == 'cyrillic':
    first = ('Иван', 'Ольга', 'Сергей', 'Анна', 'Дмитрий', 'Елена', 'Алексей', 'Мария')
    last = ('Иванов', 'Петрова', 'Смирнов', 'Кузнецова', 'Попов', 'Соколова', 'Лебедев')
    return f'{last[rng.integers(len(last))]} {first[rng.integers(len(first))]}'
  return f'{FIRST_NAMES[rng.integers(len(FIRST_NAMES))]} {LAST_NAMES[rng.integers(len(LAST_NAMES))]}'


def number(rng, digits=None):
  digits = digits or int(rng.integers(3, 10))
  return ''.join(str(d) for d in rng.integers(0, 10, digits))


def date(rng):
  d, m, y = int(rng.integers(1, 29)), int(rng.integers(1, 13)), int(rng.integers(1990, 2027))
  fmt = int(rng.integers(3))
  return (f'{d:02d}/{m:02d}/{y}', f'{y}-{m:02d}-{d:02d}', f'{d:02d}.{m:02d}.{y}')[fmt]


def money(rng):
  return f'{rng.uniform(1, 9999):,.2f}'


def value(rng, script):
  """A filled-in field value: a name, number, date, amount or a few words."""
  k = int(rng.integers(5))
  if k == 0:
    return person(rng, script)
  if k == 1:
    return number(rng)
  if k == 2:
    return date(rng)
  if k == 3:
    return money(rng)
  return words(rng, script, rng.integers(1, 4), capitalise=True)
