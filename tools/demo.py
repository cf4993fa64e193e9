"""The mmdeit demo: a convnet teacher and three DeiT students on scikit-learn's digits.

``make demo`` runs ``python tools/demo.py``: it trains the ResNet teacher (or reuses its
checkpoint if the same run already left one in the work dir), then the small DeiT without
distillation, with hard and with soft distillation, all with the same data, augmentation and
schedule. It prints one table (val top-1 of the last epoch and wall time of every run) and draws
the val accuracy curves of all runs into ``<work-dir>/val_accuracy.png``. Each run is an
ordinary mmengine Runner run of a config in ``configs/digits/`` (logs and checkpoints in
``<work-dir>/<config name>/``).

Examples::

    python tools/demo.py                       # the full demo (a few minutes on 2 CPU cores)
    python tools/demo.py --epochs 2 --work-dir work_dirs/demo_quick   # a quick check
"""

import argparse
import json
import os.path as osp
import platform
import time
from typing import Dict, List, Optional

import torch
from mmengine.config import Config, DictAction
from mmengine.hooks import Hook
from mmengine.runner import Runner

import mmdeit  # noqa: F401  (registers modules)
from mmdeit.engine import setup_engine

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
    parser.add_argument('--seed', type=int, default=0, help='training seed of every run')
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
        action=DictAction,
        help='override entries of all four configs, key=value (e.g. '
        'train_dataloader.dataset.indices=64 for a quick check)',
    )
    parser.add_argument(
        '--threads',
        type=int,
        default=1,
        help='torch threads (default 1: the models are tiny, and on a small busy CPU more '
        'threads mostly wait for each other)',
    )
    return parser.parse_args(argv)


def load_config(name: str, args: argparse.Namespace) -> Config:
    """The config ``name`` of ``configs/digits`` set up for one demo run."""
    cfg = Config.fromfile(osp.join(CONFIG_DIR, f'{name}.py'))
    cfg.work_dir = osp.join(args.work_dir, name)
    cfg.randomness = dict(seed=args.seed, deterministic=False)
    epochs = args.epochs
    if name == TEACHER and args.teacher_epochs is not None:
        epochs = args.teacher_epochs
    if epochs is not None:
        set_epochs(cfg, epochs)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
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


def num_params(runner: Runner) -> int:
    return sum(p.numel() for p in runner.model.parameters())


def train_run(cfg: Config, row: str, options: Optional[dict] = None) -> dict:
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
        params=num_params(runner),
        images=[len(runner.train_dataloader.dataset), len(runner.val_dataloader.dataset)],
        checkpoint=osp.join(cfg.work_dir, f'epoch_{cfg.train_cfg.max_epochs}.pth'),
        options=options or {},
    )
    with open(osp.join(cfg.work_dir, RESULT_FILE), 'w') as f:
        json.dump(result, f, indent=1)
    return result


def evaluate_checkpoint(cfg: Config, checkpoint: str) -> float:
    """Val top-1 of ``checkpoint`` with the config's test pipeline."""
    cfg = cfg.copy()
    cfg.load_from = checkpoint
    cfg.test_dataloader, cfg.test_evaluator = cfg.val_dataloader, cfg.val_evaluator
    cfg.train_dataloader = cfg.train_cfg = cfg.optim_wrapper = cfg.param_scheduler = None
    cfg.work_dir = osp.join(cfg.work_dir, 'reuse_eval')
    setup_engine()  # safe checkpoint loading
    metrics = Runner.from_cfg(cfg).test()
    return float(metrics[METRIC])


def teacher_result(args: argparse.Namespace, cfg: Config) -> dict:
    """Train the teacher, or reuse the checkpoint of an identical earlier run."""
    if args.teacher_ckpt:
        if not osp.isfile(args.teacher_ckpt):
            raise FileNotFoundError(f'--teacher-ckpt {args.teacher_ckpt} does not exist')
        top1 = evaluate_checkpoint(cfg, args.teacher_ckpt)
        return dict(
            row=RUNS[0][0],
            top1=top1,
            curve=[],
            wall_s=None,
            reused=True,
            checkpoint=args.teacher_ckpt,
            params=None,
        )
    checkpoint = osp.join(cfg.work_dir, f'epoch_{cfg.train_cfg.max_epochs}.pth')
    result_path = osp.join(cfg.work_dir, RESULT_FILE)
    if not args.retrain_teacher and osp.isfile(checkpoint) and osp.isfile(result_path):
        with open(result_path) as f:
            old = json.load(f)
        same = dict(seed=args.seed, epochs=cfg.train_cfg.max_epochs, options=_options(args))
        if all(old.get(key) == value for key, value in same.items()):
            old.update(top1=evaluate_checkpoint(cfg, checkpoint), reused=True)
            return old
    return dict(train_run(cfg, RUNS[0][0], _options(args)), reused=False)


def _options(args: argparse.Namespace) -> dict:
    # through JSON, as saved in demo_result.json (tuples become lists)
    return json.loads(json.dumps(args.cfg_options or {}))


def run_demo(args: argparse.Namespace) -> List[dict]:
    """Run the teacher and the three students; return their results in ``RUNS`` order."""
    torch.set_num_threads(args.threads)
    results = []
    teacher_cfg = load_config(TEACHER, args)
    teacher = teacher_result(args, teacher_cfg)
    results.append(teacher)
    for row, name in RUNS[1:]:
        cfg = load_config(name, args)
        if 'teacher_ckpt' in cfg.model:
            cfg.model.teacher_ckpt = teacher['checkpoint']
        results.append(dict(train_run(cfg, row, _options(args)), reused=False))
    return results


def format_table(results: List[dict]) -> str:
    """A Markdown table: run, parameters, val top-1 of the last epoch, wall time."""
    lines = [
        '| run | params | val top-1 (%) | wall time |',
        '| :-- | --: | --: | --: |',
    ]
    for r in results:
        params = f'{r["params"] / 1e6:.2f}M' if r.get('params') else '-'
        if r.get('wall_s') is None:
            wall = 'reused'
        else:
            wall = f'{r["wall_s"]:.0f} s' + (' (reused)' if r.get('reused') else '')
        lines.append(f'| {r["row"]} | {params} | {r["top1"]:.2f} | {wall} |')
    return '\n'.join(lines)


def plot_curves(results: List[dict], path: str, title: str) -> None:
    """Draw the val top-1 of every run against the epoch into ``path`` (PNG).

    Two panels: the whole runs, and the second half of the students' schedule zoomed in.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_all, ax_zoom) = plt.subplots(1, 2, figsize=(11, 4.5))
    last = max((e for r in results for e, _ in r.get('curve', [])), default=1)
    tail = []
    for r in results:
        if r.get('curve'):
            epochs, accs = zip(*r['curve'])
            ax_all.plot(epochs, accs, label=f'{r["row"]}: {r["top1"]:.2f}')
            (line,) = ax_zoom.plot(epochs, accs)
            tail += [a for e, a in r['curve'] if e > last / 2]
            if epochs[-1] <= last / 2:  # a shorter run (the teacher): its final accuracy
                ax_zoom.axhline(accs[-1], color=line.get_color(), linestyle='--')
                tail.append(accs[-1])
    ax_all.set_title(title)
    ax_all.legend(loc='lower right', fontsize='small')
    ax_zoom.set_xlim(last / 2, last + 0.5)
    if tail:
        ax_zoom.set_ylim(min(tail) - 0.5, 100.2)
    ax_zoom.set_title('second half, zoomed')
    for ax in (ax_all, ax_zoom):
        ax.set_xlabel('epoch')
        ax.set_ylabel('val top-1 (%)')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        results = run_demo(args)
    finally:
        torch.set_num_threads(threads)
    total = time.perf_counter() - start
    png = osp.join(args.work_dir, 'val_accuracy.png')
    plot_curves(results, png, f'digits val top-1 (seed {args.seed})')
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(dict(results=results, total_s=total, seed=args.seed), f, indent=1)
    train_images, val_images = results[-1]['images']
    print(
        f'\nmmdeit digits demo: seed {args.seed}, {train_images} train / {val_images} val images, '
        f'{results[0].get("epochs", "?")} teacher / {results[-1]["epochs"]} student epochs; '
        f'{platform.machine()} CPU, '
        f'torch {torch.__version__}, {args.threads} thread(s)\n'
    )
    print(format_table(results))
    print(f'\ntotal wall time {total / 60:.1f} min; val accuracy curves: {png}')
    return results


if __name__ == '__main__':
    main()
