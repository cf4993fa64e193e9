"""Training-loss curves and last validation of several runs, grouped (e.g. fp32 against --amp).

Each ``--runs LABEL=WORK_DIR [WORK_DIR ...]`` group is one curve colour; every work dir is one
run of ``tools/train.py`` (its newest ``*/vis_data/scalars.json``). The plot shows each run's
training loss over the iterations (a moving average of ``--smooth`` logged values); the printed
table gives per group, over its runs, the mean training loss of the last ``--tail`` logged
values and the last validation's ``accuracy/top1``, with every run's value, so that the spread
between seeds within a group can be set against the difference between groups. Example::

    python tools/analysis/loss_curves.py --runs fp32=work_dirs/fp32_s* bf16=work_dirs/amp_s* \\
        --out loss_curves.png
"""

import argparse
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional

try:  # imported as tools.analysis.loss_curves
    from . import gpu_check
except ImportError:  # run as a script: this folder is on sys.path
    import gpu_check

TOP1 = 'accuracy/top1'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--runs', nargs='+', required=True, help='LABEL=WORK_DIR, then more dirs')
    p.add_argument('--smooth', type=int, default=5, help='moving average of logged losses')
    p.add_argument('--tail', type=int, default=20, help='logged losses in the final mean')
    p.add_argument('--out', help='the plot (PNG); none without it')
    args = p.parse_args(argv)
    args.groups: Dict[str, List[Path]] = {}
    label = None
    for item in args.runs:
        if '=' in item:
            label, item = item.split('=', 1)
            if not label:
                p.error(f'--runs: an empty label in {item!r}')
        elif label is None:
            p.error(f'--runs must start with LABEL=WORK_DIR, got {item!r}')
        args.groups.setdefault(label, []).append(Path(item))
    for name in ('smooth', 'tail'):
        if getattr(args, name) < 1:
            p.error(f'--{name} must be >= 1')
    return args


def read_run(work_dir: Path) -> dict:
    """``iters`` and ``loss`` of the training log lines, ``val`` (the last validation's top-1)."""
    rows = gpu_check.scalar_rows(work_dir)
    if rows is None:
        raise FileNotFoundError(f'{work_dir}: no */vis_data/scalars.json (not a train work dir?)')
    train = [r for r in rows if 'loss' in r]
    vals = [r[TOP1] for r in rows if TOP1 in r]
    return dict(
        iters=[r.get('iter', r.get('step')) for r in train],
        loss=[r['loss'] for r in train],
        val=vals[-1] if vals else None,
    )


def summary(groups: Dict[str, List[Path]], tail: int) -> str:
    """A Markdown table: per group, the final training loss and last val top-1 over its runs."""
    lines = [
        f'| group | runs | training loss, mean of the last {tail} logged | val top-1 (%) |',
        '| :-- | --: | :-- | :-- |',
    ]
    for label, dirs in groups.items():
        runs = [read_run(d) for d in dirs]
        finals = [statistics.fmean(r['loss'][-tail:]) for r in runs]
        vals = [r['val'] for r in runs if r['val'] is not None]

        def cell(values, fmt):
            each = ' / '.join(format(v, fmt) for v in values)
            if len(values) < 2:
                return each or '-'
            mean, std = statistics.fmean(values), statistics.stdev(values)
            return f'{mean:{fmt}} ± {std:{fmt}} ({each})'

        lines.append(f'| {label} | {len(runs)} | {cell(finals, ".4f")} | {cell(vals, ".2f")} |')
    return '\n'.join(lines)


def plot(groups: Dict[str, List[Path]], smooth: int, path: str) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for colour, (label, dirs) in zip(colours, groups.items()):
        for i, d in enumerate(dirs):
            run = read_run(d)
            loss = run['loss']
            avg = [statistics.fmean(loss[max(0, j - smooth + 1) : j + 1]) for j in range(len(loss))]
            ax.plot(
                run['iters'], avg, color=colour, alpha=0.8, lw=1, label=label if i == 0 else None
            )
    ax.set(xlabel='iteration', ylabel=f'training loss (moving average of {smooth})')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    text = summary(args.groups, args.tail)
    print(text)
    if args.out:
        plot(args.groups, args.smooth, args.out)
    return text


if __name__ == '__main__':
    main(sys.argv[1:])
