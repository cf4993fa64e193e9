"""What each of mmdeit's speed measures buys: mmdeit timed with each one switched off.

One process, one model, interleaved rounds (as ``benchmark.py``). Each variant switches a
measure off for the duration of its call by patching the module attribute that implements
it; nothing else changes::

    python tools/analysis/benchmark_ablation.py --arch deit-small --out work_dirs/ablation.json

Inference variants: ``all`` (the default code), ``no_onednn`` (ordinary aten linears and
GELU), ``no_last_layer_pruning`` (the last layer computes every token), ``neither``. Training
variants: ``all``, ``no_skip_dropped`` (stochastic depth multiplies dropped branches by 0, as
mmcv does, instead of not computing them), ``no_last_layer_pruning``, ``neither``.
"""

import argparse
import contextlib
import json
import os
import sys
from typing import Callable, Dict
from unittest import mock

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_models as bm  # noqa: E402
from benchmark_timing import Device, machine_info, run_rounds  # noqa: E402


def _switches(no_onednn=False, no_pruning=False, no_skip=False) -> contextlib.ExitStack:
    from mmdeit.models.backbones import transformer_layer
    from mmdeit.models.backbones.vision_transformer import VisionTransformer
    from mmdeit.models.utils import onednn_linear
    from mmdeit.models.utils.drop_path import multiply_dropped

    stack = contextlib.ExitStack()
    if no_onednn:
        stack.enter_context(mock.patch.object(onednn_linear, '_HAS_OP', False))
    if no_pruning:
        stack.enter_context(
            mock.patch.object(VisionTransformer, '_last_layer_queries', lambda self: None)
        )
    if no_skip:
        stack.enter_context(
            mock.patch.object(transformer_layer, 'skip_dropped_samples', multiply_dropped)
        )
    return stack


SWITCHES = dict(onednn='no_onednn', skip_dropped='no_skip')


def _variant(fn: Callable[[], None], **switches) -> Callable[[], None]:
    def run():
        with _switches(**switches):
            fn()

    return run


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
    model = bm.build_mmdeit(bm.parse_arch(args.arch), bm.model_cfg(args))
    x = torch.randn(args.infer_batch, 3, args.img_size, args.img_size)

    def infer():
        with torch.inference_mode():
            model.predict(x)

    def ablate(fn: Callable[[], None], other: str, rounds: int) -> Dict[str, dict]:
        """``fn`` as is, without ``other``, without last-layer pruning, without both."""
        variants = dict(
            all=fn,
            **{f'no_{other}': _variant(fn, **{SWITCHES[other]: True})},
            no_last_layer_pruning=_variant(fn, no_pruning=True),
            neither=_variant(fn, no_pruning=True, **{SWITCHES[other]: True}),
        )
        return run_rounds(dev, variants, rounds, warmup=1)

    model.eval()
    inference = ablate(infer, 'onednn', args.rounds)
    xt = torch.randn(args.train_batch, 3, args.img_size, args.img_size)
    yt = torch.randint(0, args.num_classes, (args.train_batch,))
    opt = bm.make_adamw(model.parameters(), 'default', args.train_batch)
    step = bm.make_train_step(model.train(), opt, xt, yt, contextlib.nullcontext)
    train = ablate(step, 'skip_dropped', args.train_rounds)
    report = dict(machine=machine_info(dev), args=vars(args), inference=inference, train=train)
    for section in ('inference', 'train'):
        res: Dict[str, dict] = report[section]
        base = res['all']['best_s']
        for name, r in res.items():
            print(
                f'{section:<10}{name:<24}best {r["best_s"]:8.3f} s  median '
                f'{r["median_s"]:8.3f} s  all is {r["best_s"] / base:5.3f}x faster'
            )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == '__main__':
    main()
