"""Tables and plots of the digits study (``tools/digits_study.py``): paired gains with 95 % CIs.

For each augmentation and training-set size: mean ± sample std of val top-1 per arm over the
seeds, and the paired differences hard − none and soft − none (the same seed, hence the same
subset and teacher, in both arms) with a 95 % t-interval over the seeds; with the SimMIM arms,
also none-simmim − none and hard-simmim − hard (the same run but for the initial encoder).
Every seed's numbers are listed too, so that no point is hidden behind a mean.
"""

import glob
import json
import os.path as osp
import platform
import statistics
from typing import Dict, List, Sequence, Tuple

from tools import digits_study_common as study

BEGIN = '<!-- digits-study:begin (written by tools/digits_study.py --doc) -->'
END = '<!-- digits-study:end -->'
ARMS = tuple(arm for arm, _ in study.ARMS)
#: (arm, the arm it is compared with): the paired gains the report and plot show.
GAINS = (('hard', 'none'), ('soft', 'none'), *study.SIMMIM_ARMS.items())
TOP1 = 'accuracy/top1'


def collect(work_dir: str) -> List[dict]:
    """Every ``result.json`` under ``work_dir``."""
    results = []
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'size_*', 'seed_*', '*', 'result.json'))):
        with open(path) as f:
            results.append(json.load(f))
    return results


def t_interval(values: Sequence[float], level: float = 0.95) -> Tuple[float, float, float]:
    """``(mean, low, high)``: the t-interval of the mean (nan bounds for fewer than 2 values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float('nan'), float('nan')
    from scipy.stats import t

    half = t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def _by_cell(results: List[dict]) -> Dict[Tuple[str, float], Dict[str, Dict[int, dict]]]:
    """``{(aug, size): {arm: {seed: result}}}``."""
    cells: Dict[Tuple[str, float], Dict[str, Dict[int, dict]]] = {}
    for r in results:
        cells.setdefault((r['aug'], r['size']), {}).setdefault(r['arm'], {})[r['seed']] = r
    return cells


def _images(arms: Dict[str, Dict[int, dict]]) -> int:
    """The training-set size of a cell (the same for every arm and seed)."""
    return next(iter(next(iter(arms.values())).values()))['images']


def _mean_std(values: List[float]) -> str:
    if not values:
        return '-'
    if len(values) == 1:
        return f'{values[0]:.2f}'
    return f'{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}'


def _gain(
    arms: Dict[str, Dict[int, dict]], arm: str, base: str = 'none'
) -> Tuple[str, List[float]]:
    """The paired difference arm − base over the seeds both have, as text and values."""
    seeds = sorted(set(arms.get(arm, {})) & set(arms.get(base, {})))
    diffs = [arms[arm][s]['metrics'][TOP1] - arms[base][s]['metrics'][TOP1] for s in seeds]
    if not diffs:
        return '-', []
    mean, low, high = t_interval(diffs)
    if len(diffs) < 2:
        return f'{mean:+.2f} (1 seed)', diffs
    return f'{mean:+.2f} [{low:+.2f}, {high:+.2f}]', diffs


def _metric(arms, arm, key) -> List[float]:
    return [r['metrics'][key] for _, r in sorted(arms.get(arm, {}).items()) if key in r['metrics']]


def format_report(results: List[dict], command: str) -> str:
    """The Markdown report: summary table, per-head table, every seed, how it was run."""
    cells = _by_cell(results)
    present = {r['arm'] for r in results}
    arm_cols = [arm for arm in ARMS if arm in present]
    gains = [(arm, base) for arm, base in GAINS if arm in present and base in present]
    header = ['aug', 'train images', 'seeds', *arm_cols, *(f'{a} − {b}' for a, b in gains)]
    lines = [
        'Val top-1 (%) on the 360 val images after the last epoch; mean ± sample std over the '
        'seeds; gain = paired difference (same seed, subset and teacher; a *-simmim arm differs '
        'from its partner in the initial encoder only) with its 95 % t-interval.',
        '',
        '| ' + ' | '.join(header) + ' |',
        '| :-- | ' + ' | '.join(['--:'] * (len(header) - 1)) + ' |',
    ]
    for (aug, size), arms in sorted(cells.items()):
        images = _images(arms)
        seeds = len(set().union(*(set(a) for a in arms.values())))
        row = [aug, f'{images} ({size:.0%})', str(seeds)]
        row += [_mean_std(_metric(arms, arm, TOP1)) for arm in arm_cols]
        row += [_gain(arms, arm, base)[0] for arm, base in gains]
        lines.append('| ' + ' | '.join(row) + ' |')
    lines += [
        '',
        'Per head (mean over seeds): top-1 of the class-token head, the distillation head and '
        'their fusion, and how often the distillation head predicts what the teacher does.',
        '',
        '| aug | train images | arm | cls | dist | fused | dist = teacher | steps | time/run |',
        '| :-- | --: | :-- | --: | --: | --: | --: | --: | --: |',
    ]
    for (aug, _size), arms in sorted(cells.items()):
        for arm in ARMS[1:]:
            if arm not in arms:
                continue
            some = next(iter(arms[arm].values()))
            row = [aug, str(some['images']), arm]
            for key in ('cls_top1', 'dist_top1', 'fused_top1', 'dist_teacher_agreement'):
                values = _metric(arms, arm, f'per_head/{key}')
                row.append(f'{statistics.fmean(values):.2f}' if values else '-')
            walls = [r['wall_s'] for r in arms[arm].values()]
            row += [str(some['steps']), f'{statistics.fmean(walls):.0f} s']
            lines.append('| ' + ' | '.join(row) + ' |')
    lines += ['', 'Every seed (val top-1, seeds in order):', '']
    for (aug, size), arms in sorted(cells.items()):
        parts = []
        for arm in ARMS:
            values = [f'{r["metrics"][TOP1]:.2f}' for _, r in sorted(arms.get(arm, {}).items())]
            if values:
                parts.append(f'{arm} {" / ".join(values)}')
        lines.append(f'- {aug}, {size:.0%}: ' + '; '.join(parts))
    lines += ['', f'Regenerate with `{command}`.', '', f'Machine: {machine()}.']
    return '\n'.join(lines)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if 'model name' in line)
    except (OSError, StopIteration):
        pass
    return f'{cpu}, Python {platform.python_version()}, torch {torch.__version__}'


def plot(results: List[dict], path: str) -> None:
    """Val top-1 against training-set size per arm, and the paired gains, one row per aug."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    cells = _by_cell(results)
    augs = sorted({aug for aug, _ in cells})
    if not augs:
        return
    fig, axes = plt.subplots(len(augs), 2, figsize=(11, 4.2 * len(augs)), squeeze=False)
    for row, aug in enumerate(augs):
        sizes = sorted(size for a, size in cells if a == aug)
        images = [_images(cells[(aug, s)]) for s in sizes]
        ax_acc, ax_gain = axes[row]
        for arm in ARMS:
            means, errs, xs = [], [], []
            for x, size in zip(images, sizes):
                values = _metric(cells[(aug, size)], arm, TOP1)
                if values:
                    xs.append(x)
                    means.append(statistics.fmean(values))
                    errs.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            if xs:
                ax_acc.errorbar(xs, means, yerr=errs, marker='o', capsize=3, label=arm)
        ax_acc.set(xscale='log', xlabel='training images', ylabel='val top-1 (%)')
        ax_acc.set_title(f'{aug} augmentation: mean ± std over seeds')
        ax_acc.legend(fontsize='small')
        for arm, base in GAINS:
            xs, means, lows, highs = [], [], [], []
            for x, size in zip(images, sizes):
                _, diffs = _gain(cells[(aug, size)], arm, base)
                if len(diffs) >= 2:
                    mean, low, high = t_interval(diffs)
                    xs.append(x)
                    means.append(mean)
                    lows.append(mean - low)
                    highs.append(high - mean)
            if xs:
                ax_gain.errorbar(
                    xs, means, yerr=[lows, highs], marker='o', capsize=3, label=f'{arm} − {base}'
                )
        ax_gain.axhline(0, color='grey', linewidth=0.8)
        ax_gain.set(xscale='log', xlabel='training images', ylabel='paired gain (points)')
        ax_gain.set_title(f'{aug}: paired gains, 95 % CI')
        ax_gain.legend(fontsize='small')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_section(path: str, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Put ``text`` between the markers ``begin`` and ``end`` in ``path`` (appended if absent).

    Args:
        path: The Markdown file.
        text: The section's text.
        begin: The opening marker. Defaults to the study's :data:`BEGIN`.
        end: The closing marker. Defaults to the study's :data:`END`.
    """
    with open(path) as f:
        doc = f.read()
    block = f'{begin}\n{text}\n{end}'
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip('\n') + '\n\n' + block + '\n'
    with open(path, 'w') as f:
        f.write(doc)
