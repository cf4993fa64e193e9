"""fp32 inference of a shipped DeiT config: mmdeit in PyTorch against ONNX Runtime on its export.

Random weights (speed does not depend on them), the config's own input size; the model is
exported with :func:`mmdeit.deployment.export_onnx` and run in ONNX Runtime (CPU provider, all
graph optimisations, ``--threads`` intra-op threads) and in PyTorch as ``init_model`` gives it
(``fast_path=True``, ``torch.set_num_threads(--threads)``). Rounds are interleaved in one
process, the order rotating; images/s from the best round, the median beside it. The process
keeps freed memory for its next tensors as mmdeit's tools and ``benchmark.py`` make it
(``mmdeit.engine.keep_freed_memory``, both runtimes under it); ``--malloc glibc`` leaves glibc's
thresholds alone. Each runtime's calls start ``--settle`` seconds (0.1) after the other's ended:
ONNX Runtime's threads spin on for tens of ms after a run, and a PyTorch forward right after it
took 1.2x its time::

    python tools/analysis/onnx_speed.py --config configs/deit/deit-small_8xb128_in1k.py
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch

try:  # imported as tools.analysis.onnx_speed
    from . import deit_models as dm
    from .benchmark_report import cpu_name
    from .deploy_peers import ort_session
except ImportError:  # run as a script: this folder is on sys.path
    import deit_models as dm
    from benchmark_report import cpu_name
    from deploy_peers import ort_session

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default=str(REPO / 'configs/deit/deit-small_8xb128_in1k.py'))
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--calls', type=int, default=3, help='forwards per round')
    p.add_argument(
        '--compile', action='store_true', help='also init_model(..., compile=True) (inductor)'
    )
    dm.add_malloc_arg(p)
    dm.add_settle_arg(p)
    p.add_argument('--out', help='write the results as JSON here')
    args = p.parse_args(argv)
    dm.require_positive(p, args, ('batch', 'threads', 'rounds', 'calls'))
    if args.settle < 0:
        p.error(f'--settle must be >= 0, got {args.settle}')
    return args


def measure(
    fns: Dict[str, Callable[[], object]], rounds: int, calls: int, settle: float
) -> Dict[str, list]:
    """Seconds per call of each function, per round; one untimed round first. Each function's
    ``calls`` start ``settle`` seconds after the previous function's ended (idle cores)."""
    names, times = list(fns), {n: [] for n in fns}
    for r in range(rounds + 1):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(settle)  # the previous runtime's spinning threads go to sleep
            start = time.perf_counter()
            for _ in range(calls):
                fns[name]()
            if r:
                times[name].append((time.perf_counter() - start) / calls)
    return times


def main(argv=None) -> dict:
    args = parse_args(argv)
    malloc = dm.apply_malloc(args)
    torch.set_num_threads(args.threads)
    from mmdeit.apis import init_model
    from mmdeit.deployment import export_onnx

    torch.manual_seed(0)
    model = init_model(args.config, **{'model.init_cfg': None})
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, onnx_path = os.path.join(tmp, 'model.pth'), os.path.join(tmp, 'model.onnx')
        torch.save({'state_dict': model.state_dict()}, ckpt)
        export_onnx(args.config, ckpt, onnx_path, softmax=False)
        session = ort_session(onnx_path, args.threads)
    size = model.backbone.img_size
    x = torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(0))
    x_np = x.numpy()

    def mmdeit_eager():
        with torch.inference_mode():
            return model(x, mode='tensor')

    def onnxruntime():
        return session.run(['output'], {'input': x_np})[0]

    fns = {'mmdeit eager (fast_path)': mmdeit_eager, 'onnxruntime': onnxruntime}
    if args.compile:
        compiled = init_model(args.config, compile=True, **{'model.init_cfg': None})
        compiled.load_state_dict(model.state_dict())

        def mmdeit_compiled():
            with torch.no_grad():
                return compiled(x, mode='tensor')

        start = time.perf_counter()
        mmdeit_compiled()  # compiles
        print(f'  init_model(compile=True): first forward {time.perf_counter() - start:.0f} s')
        fns['mmdeit init_model(compile=True)'] = mmdeit_compiled
    diff = float(np.abs(mmdeit_eager().numpy() - onnxruntime()).max())
    times = measure(fns, args.rounds, args.calls, args.settle)
    import onnxruntime as ort

    result = dict(
        cpu=cpu_name(default='unknown CPU'),
        threads=args.threads,
        malloc=malloc,
        settle_s=args.settle,
        torch=torch.__version__,
        onnxruntime=ort.__version__,
        config=Path(args.config).name,
        batch=args.batch,
        input_size=list(size),
        logits_max_abs_diff=diff,
        images_per_s={n: args.batch / min(t) for n, t in times.items()},
        median_images_per_s={n: args.batch / float(np.median(t)) for n, t in times.items()},
        loadavg_end=list(os.getloadavg()),
    )
    print(
        f'{result["cpu"]} | {args.threads} threads | torch {torch.__version__} | '
        f'onnxruntime {ort.__version__} | {result["config"]} batch {args.batch} fp32 | '
        f'malloc {args.malloc}'
    )
    for name in times:
        print(
            f'  {name:26s} {result["images_per_s"][name]:7.1f} images/s '
            f'(median {result["median_images_per_s"][name]:.1f})'
        )
    base = result['images_per_s']['onnxruntime']
    print(
        f'  mmdeit / onnxruntime: {result["images_per_s"]["mmdeit eager (fast_path)"] / base:.2f}x'
        f' | logits agree to {diff:.1e} | load {result["loadavg_end"][0]:.2f}'
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == '__main__':
    main()
