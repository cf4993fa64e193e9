"""The mmdeit demo: a convnet teacher and three DeiT students on scikit-learn's digits.

``make demo`` runs ``python tools/demo.py``: it trains the ResNet teacher (or reuses its
checkpoint if the same run already left one in the work dir), then the small DeiT without
distillation, with hard and with soft distillation, all with the same data, augmentation and
schedule. It prints one table (val top-1 of the last epoch and wall time of every run) and draws
the val accuracy curves of all runs into ``<work-dir>/val_accuracy.png``. Each run is an
ordinary mmengine Runner run of a config in ``configs/digits/`` (logs and checkpoints in
``<work-dir>/<config name>/``); a reused checkpoint is evaluated by ``tools/test.py``.

With several ``--seeds`` the whole demo runs once per seed, in ``<work-dir>/seed_<seed>``, and
a table of mean ± std over the seeds follows; ``--doc`` writes it between the markers of a
Markdown file (``docs/digits.md``), keeping the text around them.

Examples::

    python tools/demo.py                       # the full demo (a few minutes on 2 CPU cores)
    python tools/demo.py --epochs 2 --work-dir work_dirs/demo_quick   # a quick check
    python tools/demo.py --seeds 0 1 2 --doc docs/digits.md           # docs/digits.md's table
"""

import argparse
import json
import os.path as osp
import platform
import shlex
import sys
import time
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.config import Config, DictAction
from mmengine.hooks import Hook
from mmengine.runner import Runner

import mmdeit  # noqa: F401  (registers modules)
from mmdeit.engine import setup_engine

if not __package__:  # run as a script (make demo): the checkout's tools/ package is importable
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from tools import demo_report as report  # noqa: E402
from tools import test as test_tool  # noqa: E402  (its evaluation is the demo's)

CONFIG_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs', 'digits')
TEACHER = 'resnet-digits_1xb64_digits'
#: (row name, config name) of the runs, the teacher first.
RUNS = (
    ('teacher (ResNet-18 narrow)', TEACHER),
    ('DeiT, no distillation', 'deit-digits-tiny_1xb64_digits'),
    ('DeiT, hard distillation', 'deit-digits-tiny-distilled-hard_1xb64_digits'),
    ('DeiT, soft distillation', 'deit-digits-tiny-distilled-soft_1xb64_digits'),
)
RESULT_FILE = 'demo_result.json'
METRIC = 'accuracy/top1'


class ValCurveHook(Hook):
    """Record ``(epoch, val top-1)`` after every validation of the run."""

    priority = 'LOWEST'

    def __init__(self):
        self.curve: List[List[float]] = []

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        if metrics and METRIC in metrics:
            self.curve.append([runner.epoch, float(metrics[METRIC])])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Teacher vs DeiT students on digits (mmdeit)')
    parser.add_argument('--work-dir', default='work_dirs/digits_demo', help='output folder')
    parser.add_argument(
        '--seeds',
        '--seed',
        type=int,
        nargs='+',
        default=[0],
        help='training seed(s) of every run; several: the whole demo once per seed, and mean ± '
        'std over them',
    )
    parser.add_argument(
        '--epochs',
        type=int,
        help="epochs of every run (default: the configs' schedules, 60 for the students and 30 "
        'for the teacher)',
    )
    parser.add_argument(
        '--teacher-epochs',
        type=int,
        help='epochs of the teacher (default: --epochs if given, else 30)',
    )
    parser.add_argument(
        '--teacher-ckpt', help='use this teacher checkpoint instead of training or reusing one'
    )
    parser.add_argument(
        '--retrain-teacher', action='store_true', help='train the teacher even if reusable'
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        default=[],
        metavar='KEY=VALUE',
        help='override entries of all four configs (e.g. train_dataloader.dataset.indices=64 '
        'for a quick check); val_* entries apply to test_* too, as the digits configs test on '
        'the val split',
    )
    parser.add_argument(
        '--threads',
        type=int,
        default=1,
        help='torch threads (default 1: the models are tiny, and on a small busy CPU more '
        'threads mostly wait for each other)',
    )
    parser.add_argument('--doc', help='write the mean ± std table into this Markdown file')
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f'--seeds must be distinct, got {args.seeds}')
    return args


def config_path(name: str) -> str:
    return osp.join(CONFIG_DIR, f'{name}.py')


def cfg_options(args: argparse.Namespace) -> dict:
    """``--cfg-options`` parsed as mmengine's ``DictAction`` does, through JSON (as saved)."""
    parsed = argparse.Namespace()
    DictAction(option_strings=[], dest='options')(None, parsed, args.cfg_options)
    return json.loads(json.dumps(parsed.options))


def load_config(name: str, args: argparse.Namespace, seed: int, work_dir: str) -> Config:
    """The config ``name`` of ``configs/digits`` set up for one demo run."""
    cfg = Config.fromfile(config_path(name))
    cfg.work_dir = osp.join(work_dir, name)
    cfg.randomness = dict(seed=seed, deterministic=False)
    epochs = args.epochs
    if name == TEACHER and args.teacher_epochs is not None:
        epochs = args.teacher_epochs
    if epochs is not None:
        set_epochs(cfg, epochs)
    cfg.merge_from_dict(cfg_options(args))
    return cfg


def set_epochs(cfg: Config, epochs: int) -> None:
    """Shorten or lengthen the schedule: the number of epochs and the end of every scheduler."""
    if epochs < 1:
        raise ValueError(f'epochs must be >= 1, got {epochs}')
    old = cfg.train_cfg.max_epochs
    cfg.train_cfg.max_epochs = epochs
    for scheduler in cfg.param_scheduler:
        # the warm-up keeps its length unless the run is shorter; the decay ends with the run
        if scheduler.get('end') == old:
            scheduler['end'] = epochs
        scheduler['end'] = min(scheduler['end'], epochs)
        scheduler['begin'] = min(scheduler.get('begin', 0), max(epochs - 1, 0))
    cfg.default_hooks.checkpoint.interval = min(cfg.default_hooks.checkpoint.interval, epochs)


def train_run(cfg: Config, row: str, options: dict) -> dict:
    """Train one config with a Runner; return its result (final val top-1, curve, time).

    The result is also saved as ``demo_result.json`` in the run's work dir, with ``options``
    (the demo's ``--cfg-options``) to tell later whether the run can be reused.
    """
    start = time.perf_counter()
    setup_engine()  # safe checkpoint loading, atomic checkpoint writes
    runner = Runner.from_cfg(cfg)
    curve = ValCurveHook()
    runner.register_hook(curve)
    runner.train()
    wall = time.perf_counter() - start
    if not curve.curve:
        raise RuntimeError(f'{row}: the run produced no validation result')
    result = dict(
        row=row,
        config=osp.basename(cfg.filename),
        seed=cfg.randomness.seed,
        epochs=cfg.train_cfg.max_epochs,
        top1=curve.curve[-1][1],
        curve=curve.curve,
        wall_s=wall,
        params=sum(p.numel() for p in runner.model.parameters()),
        images=[len(runner.train_dataloader.dataset), len(runner.val_dataloader.dataset)],
        checkpoint=osp.join(cfg.work_dir, f'epoch_{cfg.train_cfg.max_epochs}.pth'),
        options=options,
    )
    with open(osp.join(cfg.work_dir, RESULT_FILE), 'w') as f:
        json.dump(result, f, indent=1)
    return result


def evaluate_checkpoint(args: argparse.Namespace, cfg: Config, checkpoint: str) -> float:
    """Val top-1 of ``checkpoint``: ``tools/test.py`` with the run's config and options."""
    mirrored = [f'test_{o[len("val_") :]}' for o in args.cfg_options if o.startswith('val_')]
    argv = [cfg.filename, checkpoint, '--work-dir', osp.join(cfg.work_dir, 'reuse_eval')]
    if args.cfg_options:
        argv += ['--cfg-options', *args.cfg_options, *mirrored]
    return float(test_tool.main(argv)[METRIC])


def teacher_result(args: argparse.Namespace, cfg: Config) -> dict:
    """Train the teacher, or reuse the checkpoint of an identical earlier run."""
    if args.teacher_ckpt:
        if not osp.isfile(args.teacher_ckpt):
            raise FileNotFoundError(f'--teacher-ckpt {args.teacher_ckpt} does not exist')
        top1 = evaluate_checkpoint(args, cfg, args.teacher_ckpt)
        row = dict(row=RUNS[0][0], curve=[], wall_s=None, params=None, reused=True)
        return dict(row, top1=top1, checkpoint=args.teacher_ckpt)
    checkpoint = osp.join(cfg.work_dir, f'epoch_{cfg.train_cfg.max_epochs}.pth')
    result_path = osp.join(cfg.work_dir, RESULT_FILE)
    options = cfg_options(args)
    same = dict(seed=cfg.randomness.seed, epochs=cfg.train_cfg.max_epochs, options=options)
    if not args.retrain_teacher and osp.isfile(checkpoint) and osp.isfile(result_path):
        with open(result_path) as f:
            old = json.load(f)
        if all(old.get(key) == value for key, value in same.items()):
            old.update(top1=evaluate_checkpoint(args, cfg, checkpoint), reused=True)
            return old
    return dict(train_run(cfg, RUNS[0][0], options), reused=False)


def run_demo(args: argparse.Namespace, seed: int, work_dir: str) -> List[dict]:
    """Run the teacher and the three students; return their results in ``RUNS`` order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        teacher = teacher_result(args, load_config(TEACHER, args, seed, work_dir))
        results = [teacher]
        for row, name in RUNS[1:]:
            cfg = load_config(name, args, seed, work_dir)
            if 'teacher_ckpt' in cfg.model:
                cfg.model.teacher_ckpt = teacher['checkpoint']
            results.append(dict(train_run(cfg, row, cfg_options(args)), reused=False))
    finally:
        torch.set_num_threads(threads)
    return results


def demo_seed(args: argparse.Namespace, seed: int, work_dir: str) -> Tuple[List[dict], float]:
    """The whole demo for one seed in ``work_dir``: runs, curves, ``results.json``, table.

    Returns:
        The results in ``RUNS`` order and the wall time of the runs (s).
    """
    start = time.perf_counter()
    results = run_demo(args, seed, work_dir)
    total = time.perf_counter() - start
    png = osp.join(work_dir, 'val_accuracy.png')
    report.plot_curves(results, png, f'digits val top-1 (seed {seed})')
    with open(osp.join(work_dir, 'results.json'), 'w') as f:
        json.dump(dict(results=results, total_s=total, seed=seed), f, indent=1)
    train_images, val_images = results[-1]['images']
    print(
        f'\nmmdeit digits demo: seed {seed}, {train_images} train / {val_images} val images, '
        f'{results[0].get("epochs", "?")} teacher / {results[-1]["epochs"]} student epochs; '
        f'{platform.machine()} CPU, torch {torch.__version__}, {args.threads} thread(s)\n'
    )
    print(report.format_table(results))
    print(f'\ntotal wall time {total / 60:.1f} min; val accuracy curves: {png}')
    return results, total


def main(argv=None) -> Dict[int, List[dict]]:
    """Run the demo for every seed; return each seed's results in ``RUNS`` order."""
    args = parse_args(argv)
    several = len(args.seeds) > 1
    per_seed, totals = {}, {}
    for seed in args.seeds:
        work_dir = osp.join(args.work_dir, f'seed_{seed}') if several else args.work_dir
        per_seed[seed], totals[seed] = demo_seed(args, seed, work_dir)
    if several or args.doc:
        command = 'python tools/demo.py ' + shlex.join(sys.argv[1:] if argv is None else argv)
        section = report.format_section(per_seed, totals, command, report.machine())
        print(f'\n{section}')
        if args.doc:
            report.write_section(args.doc, section)
            print(f'\nwritten to {args.doc}')
    return per_seed


if __name__ == '__main__':
    main()
