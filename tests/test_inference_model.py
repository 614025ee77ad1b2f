"""The real flax embedder through the inference stack: checkpoint loading, CLI, export parity.

A tiny LCNet (32 px) is saved as train.py saves it (TrainState, orbax StandardSave, config.json),
then every CLI subcommand runs in-process on folders the test writes.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import train
from configs import default
from inference import cli
from inference.images import InputError
from inference.model import load_checkpoint, load_model
from inference.registry import Registry

SIZE = 32
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
  c = default.get_config()
  c.data.image_size = SIZE
  c.model.width = 0.25
  c.model.embed_dim = 32
  c.model.squeeze_channels = 8
  c.keep_checkpoints = 1
  c.async_checkpointing = False
  return c


def capture(doc_type, i):
  layout = np.random.RandomState(doc_type).randint(0, 256, (8, 8, 3)).astype(np.float32)
  rng = np.random.RandomState(1000 * doc_type + i)
  x = np.kron(layout, np.ones((4, 4, 1))) * rng.uniform(0.97, 1.03) + rng.normal(0, 2, (32, 32, 3))
  return np.clip(x, 0, 255).astype(np.uint8)


def write(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  config = tiny_config()
  wd = str(tmp_path_factory.mktemp('workdir'))
  from models.embedder import build_model
  model = build_model(config.model)
  mesh = jax.make_mesh((1, 1), ('data', 'model'))
  tx = train.create_optimizer(config, train.create_learning_rate_fn(config))
  state = train.init_train_state(config, model, tx, jax.random.PRNGKey(0), 10, mesh)
  manager = train.create_checkpoint_manager(config, wd)
  manager.save(7, args=train.ocp.args.StandardSave(state))
  manager.wait_until_finished()
  train.write_config(config, wd)
  return wd, state


def run_cli(capsys, *argv):
  code = cli.main(list(argv))
  out = capsys.readouterr()
  return code, out.out, out.err


def test_checkpoint_restores_model_params_only(workdir, tmp_path):
  wd, state = workdir
  from inference.model import from_variables
  loaded = load_checkpoint(wd)
  direct = from_variables(tiny_config().model, {'params': state.params['model'],
                                                'batch_stats': state.batch_stats}, SIZE)
  assert loaded.fingerprint == direct.fingerprint
  x = np.stack([capture(t, 0) for t in range(3)])
  np.testing.assert_allclose(loaded.embed(x), direct.embed(x), atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(loaded.embed(x), axis=1), 1.0, rtol=1e-5)
  empty = tmp_path / 'empty'
  os.makedirs(empty / 'checkpoints')
  train.write_config(tiny_config(), str(empty))
  with pytest.raises(InputError, match='no finished checkpoint'):
    load_checkpoint(str(empty))
  with pytest.raises(InputError, match='neither a training workdir'):
    load_model(str(tmp_path))


def test_cli_register_classify_calibrate_evaluate(workdir, tmp_path, capsys):
  wd, _ = workdir
  root, reg = tmp_path / 'types', str(tmp_path / 'reg.npz')
  for t in range(4):
    write(str(root / f'T{t}' / 'ref.png'), capture(t, 0))
  write(str(root / 'T0' / 'stamped' / 'ref.png'), capture(20, 0))
  code, out, _ = run_cli(capsys, 'register', '--checkpoint', wd, '--registry', reg,
                         '--tree', str(root), '--no-progress')
  assert code == 0 and 'T0/stamped: +1' in out
  write(str(tmp_path / 'late' / 'x.png'), capture(4, 0))  # a type added later
  code, out, _ = run_cli(capsys, 'register', '--checkpoint', wd, '--registry', reg,
                         '--label', 'T4', str(tmp_path / 'late'), '--json')
  assert code == 0 and json.loads(out)['entries'] == 6

  # Captures of the registered types are named; a sub-label answers with its type.
  for t in (0, 1, 2, 3, 4, 20):
    write(str(tmp_path / 'queries' / f'q{t}.png'), capture(t, 5))
  code, out, _ = run_cli(capsys, 'classify', '--checkpoint', wd, '--registry', reg, '--json',
                         '--top-k', '2', str(tmp_path / 'queries' / '*.png'))
  answers = {os.path.basename(a['file']): a for a in map(json.loads, out.splitlines())}
  assert code == 0 and answers['q20.png']['nearest'] == 'T0/stamped'
  assert [answers[f'q{t}.png']['nearest'] for t in range(5)] == [f'T{t}' for t in range(5)]
  assert len(answers['q0.png']['top_k']) == 2

  # --turns 180: every image also entered upside down; an upside-down capture meets that entry.
  turned = str(tmp_path / 'turned.npz')
  code, out, _ = run_cli(capsys, 'register', '--checkpoint', wd, '--registry', turned,
                         '--tree', str(root), '--turns', '180', '--json')
  assert code == 0 and json.loads(out)['entries'] == 10
  write(str(tmp_path / 'upside_down.png'), capture(2, 5)[::-1, ::-1])
  code, out, _ = run_cli(capsys, 'classify', '--checkpoint', wd, '--registry', turned, '--json',
                         str(tmp_path / 'upside_down.png'))
  answer = json.loads(out)
  assert code == 0 and (answer['nearest'], answer['turn']) == ('T2', 180), answer
  code, _, err = run_cli(capsys, 'register', '--checkpoint', wd, '--registry', turned,
                         '--label', 'T4', str(tmp_path / 'late'), '--turns', '90')
  assert code == 1 and 'enters images at turns [180], not [90]' in err
  code, _, err = run_cli(capsys, 'register', '--checkpoint', wd, '--registry', turned,
                         '--label', 'T4', str(tmp_path / 'late'), '--turns', '45')
  assert code == 1 and '--turns' in err and err.count('\n') == 1
  code, out, _ = run_cli(capsys, 'register', '--checkpoint', wd, '--registry', turned,
                         '--label', 'T4', str(tmp_path / 'late'), '--json')  # kept: 180
  assert code == 0 and json.loads(out)['entries'] == 12
  assert Registry.load(turned).turns == [0, 180] * 6  # each label: upright, then turned
  code, out, _ = run_cli(capsys, 'list', '--registry', turned)
  assert code == 0 and 'also entered turned by 180 degrees' in out and 'T4\t2' in out

  # Calibrate from a labels.csv folder, then evaluate on it.
  data = tmp_path / 'labelled'
  rows = ['file,label,role']
  for t in range(12):
    for i in range(3):
      write(str(data / f'{t}_{i}.png'), capture(100 + t, i))
      rows.append(f'{t}_{i}.png,L{t},{"register" if i == 0 else "query"}')
  (data / 'labels.csv').write_text('\n'.join(rows) + '\n')
  code, out, _ = run_cli(capsys, 'calibrate', '--checkpoint', wd, '--registry', reg,
                         '--data', str(data), '--fpr', '1e-3', '--json')
  result = json.loads(out)
  # 36 captures cannot resolve 1e-3 per capture: the threshold is the highest score seen, and
  # the answer says how many captures it needs.
  assert code == 0 and result['false_accepts'] == 0 and result['unknown_trials'] == 36
  assert not result['resolved'] and result['needed_captures'] == 1000
  assert Registry.load(reg).threshold == result['threshold']
  # Re-calibrating from the captures kept in the registry gives the same threshold.
  code, out, _ = run_cli(capsys, 'calibrate', '--checkpoint', wd, '--registry', reg, '--json',
                         '--far', '1e-3')
  assert code == 0 and json.loads(out)['threshold'] == result['threshold']
  code, out, _ = run_cli(capsys, 'evaluate', '--checkpoint', wd, '--data', str(data), '--json',
                         '--roc', str(tmp_path / 'roc.png'), '--out', str(tmp_path / 'm.json'))
  figures = json.loads(out)
  assert code == 0 and figures == json.load(open(tmp_path / 'm.json'))
  assert 0 <= figures['tpr@fpr=1e-04'] <= 1 and 0 <= figures['auroc'] <= 1
  # Every label held out once per repeat, 2 queries each; the repeats pool their queries.
  assert figures['open_set_unknown_queries'] == 24 * figures['open_set_repeats'] == 24 * 5
  assert Image.open(tmp_path / 'roc.png').size == (640, 480)
  code, _, _ = run_cli(capsys, 'embed', '--checkpoint', wd, '--data', str(data),
                       '--out', str(tmp_path / 'e.npy'))
  e = np.load(tmp_path / 'e.npy')
  assert code == 0 and e.shape == (36, 32)
  np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)

  # Bad input: one line on stderr, exit 1, registry untouched.
  before = open(reg, 'rb').read()
  (tmp_path / 'junk.png').write_text('not an image')
  for argv in (['register', '--label', 'T9', str(tmp_path / 'junk.png')],
               ['register', '--label', 'a/b/c', str(tmp_path / 'late')],
               ['register', '--tree', str(tmp_path / 'nothing-here')],
               ['classify', str(tmp_path / 'no-such-*.png')]):
    code, out, err = run_cli(capsys, argv[0], '--checkpoint', wd, '--registry', reg, *argv[1:])
    assert code == 1 and err.startswith('error: ') and err.count('\n') == 1, (argv, err)
  code, _, err = run_cli(capsys, 'evaluate', '--checkpoint', wd, '--data', str(tmp_path / 'late'))
  assert code == 1 and 'no labels.csv' in err
  assert open(reg, 'rb').read() == before


def test_export_parity_and_onnx_without_jax(workdir, tmp_path, capsys):
  wd, _ = workdir
  out_dir = str(tmp_path / 'export')
  code, out, _ = run_cli(capsys, 'export', '--checkpoint', wd, '--out', out_dir, '--json')
  result = json.loads(out)
  assert code == 0
  for fmt in ('jax', 'onnx'):
    assert result[fmt]['max_abs_diff'] < 1e-4, result
  # The artefacts carry the checkpoint's fingerprint: its registries work with them.
  reg = Registry.for_model(load_checkpoint(wd))
  x = np.stack([capture(t, 0) for t in range(3)])
  reg.add_embeddings('A', reg.model.embed(x[:1]))
  reg.add_embeddings('B', reg.model.embed(x[1:2]))
  reg.save(str(tmp_path / 'reg.npz'))
  assert load_model(os.path.join(out_dir, 'embedder.jaxexport')).fingerprint == reg.fingerprint
  np.save(tmp_path / 'x.npy', x)
  want = reg.model.embed(x)
  # onnxruntime alone: JAX made unimportable in the child process.
  script = f"""
import sys; sys.modules['jax'] = None; sys.modules['flax'] = None
import numpy as np
from inference.onnx_model import load_onnx
from inference.registry import Registry
model = load_onnx({os.path.join(out_dir, 'embedder.onnx')!r})
reg = Registry.load({str(tmp_path / 'reg.npz')!r}, model)
x = np.load({str(tmp_path / 'x.npy')!r})
print(np.abs(model.embed(x) - np.load({str(tmp_path / 'want.npy')!r})).max())
print(reg.classify(x[:2])[0]['label'], reg.classify(x[:2])[1]['label'])
"""
  np.save(tmp_path / 'want.npy', want)
  proc = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  diff, labels = proc.stdout.strip().splitlines()
  assert float(diff) < 1e-4 and labels == 'A B'
