"""Repeat the digits demo over several training seeds; write mean ± std into docs/digits.md.

Every seed runs the whole demo (``tools/demo.py``: the teacher, then the DeiT student without,
with hard and with soft distillation) in ``<work-dir>/seed_<seed>``; the train/val split is the
dataset's fixed one for all seeds. The results table, the command and the machine go between
the markers of the doc (created if missing); the text around them is kept.

Example::

    python tools/digits_seeds.py                 # seeds 0 1 2, the configs' schedule
"""

import argparse
import importlib.util
import json
import os
import os.path as osp
import platform
import re
import shlex
import statistics
import sys
import time
from typing import Dict, List, Sequence

BEGIN = '<!-- digits-seeds:begin (written by tools/digits_seeds.py) -->'
END = '<!-- digits-seeds:end -->'


def _load_demo():
    """``tools/demo.py`` as a module (tools/ is not a package)."""
    path = osp.join(osp.dirname(osp.abspath(__file__)), 'demo.py')
    spec = importlib.util.spec_from_file_location('mmdeit_digits_demo', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='The digits demo over several seeds (mmdeit)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--work-dir', default='work_dirs/digits_seeds')
    parser.add_argument('--epochs', type=int, help='epochs of every run (default: the configs)')
    parser.add_argument(
        '--teacher-epochs', type=int, help='epochs of the teacher (default: --epochs, else 30)'
    )
    parser.add_argument('--threads', type=int, default=1, help='torch threads, as tools/demo.py')
    parser.add_argument('--doc', default='docs/digits.md', help='the Markdown file to update')
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f'--seeds must be distinct, got {args.seeds}')
    return args


def machine() -> str:
    """CPU model, core count, OS, Python and torch versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            names = re.findall(r'^model name\s*:\s*(.+)$', f.read(), flags=re.M)
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    return (
        f'{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, '
        f'Python {platform.python_version()}, torch {torch.__version__} (CPU)'
    )


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` with the sample standard deviation (n - 1), two decimals."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f'{statistics.mean(values):.2f} ± {std:.2f}'


def format_section(
    per_seed: Dict[int, List[dict]], totals: Dict[int, float], command: str, host: str
) -> str:
    """The Markdown written between the markers: table, per-seed numbers, command, machine."""
    seeds = sorted(per_seed)
    rows = [r['row'] for r in per_seed[seeds[0]]]
    first = per_seed[seeds[0]]
    epochs = (
        f'teacher {first[0].get("epochs", "?")} epochs, students {first[-1].get("epochs", "?")}'
    )
    lines = [
        f'Val top-1 (%) of the last epoch on the fixed 360-image val split ({epochs}), '
        f'{len(seeds)} training seeds ({", ".join(map(str, seeds))}); mean ± sample std.',
        '',
        '| run | val top-1 mean ± std | per seed | train time per run (mean) |',
        '| :-- | --: | --: | --: |',
    ]
    for i, row in enumerate(rows):
        accs = [per_seed[s][i]['top1'] for s in seeds]
        walls = [per_seed[s][i]['wall_s'] for s in seeds if per_seed[s][i].get('wall_s')]
        wall = f'{statistics.mean(walls):.0f} s' if walls else '-'
        each = ' / '.join(f'{a:.2f}' for a in accs)
        lines.append(f'| {row} | {mean_std(accs)} | {each} | {wall} |')
    total = ', '.join(f'seed {s}: {totals[s] / 60:.1f} min' for s in seeds)
    lines += [
        '',
        f'Whole demo per seed (teacher + three students): {total}.',
        '',
        'Reproduce with',
        '',
        '```bash',
        command,
        '```',
        '',
        f'Machine: {host}.',
    ]
    return '\n'.join(lines)


def write_section(doc: str, section: str) -> None:
    """Put ``section`` between the markers of ``doc``, keeping the rest of the file."""
    block = f'{BEGIN}\n{section}\n{END}'
    if osp.isfile(doc):
        with open(doc) as f:
            text = f.read()
    else:
        text = f'# DeiT distillation on scikit-learn digits\n\n{BEGIN}\n{END}\n'
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f'{doc} must contain the markers {BEGIN!r} and {END!r} once each')
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    os.makedirs(osp.dirname(osp.abspath(doc)), exist_ok=True)
    with open(doc, 'w') as f:
        f.write(head + block + tail)


def main(argv=None) -> Dict[int, List[dict]]:
    args = parse_args(argv)
    demo = _load_demo()
    per_seed, totals = {}, {}
    for seed in args.seeds:
        demo_argv = [
            '--seed', str(seed),
            '--work-dir', osp.join(args.work_dir, f'seed_{seed}'),
            '--threads', str(args.threads),
        ]  # fmt: skip
        if args.epochs is not None:
            demo_argv += ['--epochs', str(args.epochs)]
        if args.teacher_epochs is not None:
            demo_argv += ['--teacher-epochs', str(args.teacher_epochs)]
        start = time.perf_counter()
        per_seed[seed] = demo.main(demo_argv)
        totals[seed] = time.perf_counter() - start
    command = 'python tools/digits_seeds.py ' + shlex.join(sys.argv[1:] if argv is None else argv)
    section = format_section(per_seed, totals, command.strip(), machine())
    write_section(args.doc, section)
    with open(osp.join(args.work_dir, 'seeds_results.json'), 'w') as f:
        json.dump(dict(per_seed=per_seed, totals=totals), f, indent=1)
    print(f'\n{section}\n\nwritten to {args.doc}')
    return per_seed


if __name__ == '__main__':
    main()
