"""What mmdeit's speed measures buy: the backbone with ``fast_path=True`` against ``False``.

One process, two models holding the same weights, interleaved rounds (as ``benchmark.py``).
The variants differ only in the backbone's ``fast_path`` switch (see
``mmdeit/models/backbones/fast_transformer_layer.py``)::

    python tools/analysis/benchmark_ablation.py --arch deit-small --out work_dirs/ablation.json

Inference and training variants: ``fast_path`` (the default build: oneDNN linears with GELU
fused in fp32 inference, shortcuts summed inside the GEMMs, stochastic depth skipping the
dropped samples in training, last-layer pruning) and ``reference`` (``fast_path=False``: the
layers as the formula, every token and every sample computed). The individual measures are
no longer separately switchable; they are on or off together.
"""

import argparse
import contextlib
import copy
import json
import os
import sys
from typing import Dict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_models as bm  # noqa: E402
from benchmark_timing import Device, machine_info, run_rounds  # noqa: E402


def build_models(args) -> Dict[str, bm.DeiTModel]:
    """mmdeit's DeiT built with ``fast_path`` on and off, holding the same weights."""
    from mmdeit.models.backbones import DistilledVisionTransformer

    fast = bm.build_mmdeit(bm.parse_arch(args.arch), bm.model_cfg(args))
    backbone = DistilledVisionTransformer(
        arch=bm.parse_arch(args.arch),
        img_size=args.img_size,
        patch_size=args.patch_size,
        drop_path_rate=args.drop_path_rate,
        fast_path=False,
    )
    backbone.load_state_dict(fast.backbone.state_dict(), strict=True)
    return dict(fast_path=fast, reference=bm.DeiTModel(backbone, copy.deepcopy(fast.head)))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='deit-small')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--patch-size', type=int, default=16)
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--drop-path-rate', type=float, default=0.1)
    p.add_argument('--infer-batch', type=int, default=8)
    p.add_argument('--train-batch', type=int, default=64)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--train-rounds', type=int, default=3)
    p.add_argument('--out', default=None)
    args = p.parse_args(argv)
    for name in ('infer_batch', 'train_batch', 'rounds', 'train_rounds'):
        if getattr(args, name) < 1:
            raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    torch.manual_seed(0)
    dev = Device('cpu')
    models = build_models(args)
    x = torch.randn(args.infer_batch, 3, args.img_size, args.img_size)

    def infer(model: bm.DeiTModel):
        def run():
            with torch.inference_mode():
                model.predict(x)

        return run

    variants = {name: infer(model.eval()) for name, model in models.items()}
    inference = run_rounds(dev, variants, args.rounds, warmup=1)
    xt = torch.randn(args.train_batch, 3, args.img_size, args.img_size)
    yt = torch.randint(0, args.num_classes, (args.train_batch,))
    variants = {}
    for name, model in models.items():
        opt = bm.make_adamw(model.parameters(), 'default', args.train_batch)
        variants[name] = bm.make_train_step(model.train(), opt, xt, yt, contextlib.nullcontext)
    train = run_rounds(dev, variants, args.train_rounds, warmup=1)
    report = dict(machine=machine_info(dev), args=vars(args), inference=inference, train=train)
    for section in ('inference', 'train'):
        res: Dict[str, dict] = report[section]
        base = res['fast_path']['best_s']
        for name, r in res.items():
            print(
                f'{section:<10}{name:<24}best {r["best_s"]:8.3f} s  median '
                f'{r["median_s"]:8.3f} s  fast_path is {r["best_s"] / base:5.3f}x faster'
            )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == '__main__':
    main()
