"""main.py as 2 processes x 4 faked CPU devices on localhost beside 1 process x 8, same flags.

  python tools/two_process_run.py --out /tmp/two [--steps 10] [--resume_steps 15]

Runs the tiny demo config (32 px, LCNet-0.25, mesh 4 x 2, synthetic cards, eval and checkpoints
on the way) once in one 8-device process and once as two processes joined by
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, then (with --resume_steps) runs the
two processes again to that many steps, which must resume. Prints one JSON line: every train/loss,
train/grad_norm and eval/ scalar of both runs side by side, and the checkpoints each left.
About 3-4 minutes on two cores, mostly compiling.
"""
import argparse
import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TINY = ['--config.data.image_size=32', "--config.data.sources=('synthetic',)",
        "--config.eval_sets=('synthetic_heldout',)", '--config.data.synthetic.num_templates=16',
        '--config.data.synthetic.template_size=48', '--config.data.synthetic.heldout_templates=6',
        '--config.model.width=0.25', '--config.model.embed_dim=32',
        '--config.model.squeeze_channels=8', '--config.batch_size=16',
        '--config.eval_batch_size=16', '--config.optimizer.warmup_steps=1',
        '--config.log_every_steps=5', '--config.eval_every_steps=10',
        '--config.checkpoint_every_steps=5', '--config.mesh.data=4', '--config.mesh.model=2']


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run(workdir, steps, processes):
  cmd = [sys.executable, 'main.py', '--config=configs/arcface_clip.py:demo',
         f'--workdir={workdir}', *TINY, f'--config.num_train_steps={steps}']
  base = dict(os.environ, JAX_PLATFORMS='cpu')
  if processes == 1:
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=dict(
        base, XLA_FLAGS='--xla_force_host_platform_device_count=8'),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
  else:
    port = free_port()
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=dict(
        base, XLA_FLAGS='--xla_force_host_platform_device_count=4',
        JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES=str(processes),
        JAX_PROCESS_ID=str(i)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
  logs = [p.communicate(timeout=1200)[1] for p in procs]
  for p, log in zip(procs, logs):
    if p.returncode:
      sys.exit(f'{workdir}: a process exited with {p.returncode}: {log.strip().splitlines()[-1]}')
  return logs


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', required=True, help='folder for the two workdirs')
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--resume_steps', type=int, default=15)
  args = p.parse_args()
  from tools.read_scalars import read_scalars  # pylint: disable=import-outside-toplevel
  one, two = os.path.join(args.out, 'one_process'), os.path.join(args.out, 'two_processes')
  run(one, args.steps, 1)
  run(two, args.steps, 2)
  a, b = read_scalars(one), read_scalars(two)
  out = {'scalars': {k: {'one_process': a[k], 'two_processes': b.get(k)} for k in sorted(a)
                     if k.startswith(('train/loss', 'train/grad_norm', 'eval/'))}}
  if args.resume_steps > args.steps:
    logs = run(two, args.resume_steps, 2)
    out['resumed_in_every_process'] = all(
        f'Resumed from checkpoint at step {args.steps}' in log for log in logs)
  out['checkpoints'] = {name: sorted(int(d) for d in os.listdir(os.path.join(w, 'checkpoints'))
                                     if d.isdigit()) for name, w in (('one', one), ('two', two))}
  print(json.dumps(out))


if __name__ == '__main__':
  main()
