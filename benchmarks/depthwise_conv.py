"""Depthwise convolution speed: every models.layers impl vs PyTorch, forward and fwd+bwd.

  python benchmarks/depthwise_conv.py                 # 64x32x32x128, k=3, strides 1 and 2
  python benchmarks/depthwise_conv.py --kernel=5 --no_torch

Prints one JSON line per (impl, stride, pass) with median ms over interleaved rounds and the
ratio to PyTorch (when installed) and to XLA's grouped conv. The max relative error against
'xla' is printed too, as a sanity check (tests/test_layers.py is the real check).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from benchmarks import timing  # pylint: disable=g-import-not-at-top


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--size', type=int, default=32)
  p.add_argument('--channels', type=int, default=128)
  p.add_argument('--kernel', type=int, default=3)
  p.add_argument('--strides', default='1,2')
  p.add_argument('--impls', default='xla,shifted,shifted_vjp,native')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--no_torch', action='store_true')
  p.add_argument('--default_malloc', action='store_true',
                 help='keep glibc defaults (see cpu_malloc.py)')
  return p.parse_args()


def jax_candidates(args, stride):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from models import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  dtype = jnp.dtype(args.dtype)
  shape = (args.batch, args.size, args.size, args.channels)
  x = jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
  w = jnp.asarray(rng.standard_normal((args.kernel, args.kernel, 1, args.channels),
                                      np.float32) / args.kernel, dtype)
  out_size = -(-args.size // stride)
  ct = jnp.asarray(rng.standard_normal((args.batch, out_size, out_size, args.channels),
                                       np.float32), dtype)
  cands, outs = {}, {}
  for impl in args.impls.split(','):
    fwd = jax.jit(lambda x, w, impl=impl: layers.depthwise_conv(x, w, stride, impl))
    # The cotangent is an argument, not a closed-over constant XLA would try to fold.
    grad = jax.jit(jax.grad(
        lambda x, w, ct, impl=impl: jnp.sum(layers.depthwise_conv(x, w, stride, impl) * ct),
        argnums=(0, 1)))
    cands[(impl, 'fwd')] = lambda f=fwd: jax.block_until_ready(f(x, w))
    cands[(impl, 'fwd+bwd')] = lambda f=grad: jax.block_until_ready(f(x, w, ct))
    outs[impl] = [np.asarray(a, np.float32) for a in (fwd(x, w),) + grad(x, w, ct)]
  return cands, outs, (x, w, ct)


def torch_candidates(args, stride, x, w, ct):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  dtype = torch.float32 if args.dtype == 'float32' else torch.bfloat16
  conv = torch.nn.Conv2d(args.channels, args.channels, args.kernel, stride,
                         padding=args.kernel // 2, groups=args.channels, bias=False)
  # HWIO [k, k, 1, C] -> OIHW [C, 1, k, k]. PyTorch pads symmetrically; with an odd kernel
  # and even input at stride 2 that shifts the window by one pixel vs 'SAME', which costs the
  # same, so only the timing is compared.
  conv.weight.data = torch.from_numpy(np.asarray(w, np.float32).transpose(3, 2, 0, 1).copy())
  conv = conv.to(dtype)
  cands = {}
  for layout in ('nchw', 'nhwc'):
    fmt = torch.contiguous_format if layout == 'nchw' else torch.channels_last
    tx = torch.from_numpy(np.asarray(x, np.float32).transpose(0, 3, 1, 2).copy()).to(
        dtype).contiguous(memory_format=fmt).requires_grad_()
    tct = torch.from_numpy(np.asarray(ct, np.float32).transpose(0, 3, 1, 2).copy()).to(
        dtype).contiguous(memory_format=fmt)

    def fwd(tx=tx):
      with torch.no_grad():
        conv(tx)

    def fwd_bwd(tx=tx, tct=tct):
      tx.grad, conv.weight.grad = None, None
      conv(tx).backward(tct)

    cands[(f'torch_{layout}', 'fwd')] = fwd
    cands[(f'torch_{layout}', 'fwd+bwd')] = fwd_bwd
  return cands


def main():
  args = parse_args()
  timing.reexec_with_malloc_tunables(not args.default_malloc)
  import numpy as np  # pylint: disable=g-import-not-at-top
  for stride in (int(s) for s in args.strides.split(',')):
    cands, outs, (x, w, ct) = jax_candidates(args, stride)
    errors = {}
    if 'xla' in outs:
      for impl, vals in outs.items():
        errors[impl] = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12))
                           for a, b in zip(outs['xla'], vals))
    if not args.no_torch:
      try:
        cands.update(torch_candidates(args, stride, x, w, ct))
      except ImportError:
        print('torch not installed: pip install -r requirements-dev.txt', file=sys.stderr)
    times = timing.interleaved_times(cands, args.rounds)
    for (impl, pass_), samples in times.items():
      rec = {'bench': 'depthwise_conv', 'impl': impl, 'pass': pass_, 'stride': stride,
             'kernel': args.kernel, 'dtype': args.dtype,
             'shape_nhwc': [args.batch, args.size, args.size, args.channels]}
      rec.update(timing.summary(samples))
      med = rec['wall_ms_median']
      for ref in ('xla', 'torch_nchw', 'torch_nhwc'):
        if (ref, pass_) in times and ref != impl:
          ref_med = timing.summary(times[(ref, pass_)])['wall_ms_median']
          rec[f'ratio_vs_{ref}'] = round(med / ref_med, 3)
      if impl in errors:
        rec['max_rel_err_vs_xla'] = errors[impl]
      rec.update(timing.environment())
      timing.emit(rec)


if __name__ == '__main__':
  main()
