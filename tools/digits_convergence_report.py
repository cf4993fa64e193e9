"""Tables and plot of the convergence study (``tools/digits_convergence.py``).

Three reports, as the protocol in ``docs/digits.md`` declares: the steps curve (val top-1 per
augmentation, arm and student budget, mean ± sample std over the seeds, every seed listed, the
teacher's level), the paired gains (hard − none, soft − none at the same augmentation, budget
and seed, with a 95 % t-interval), and the comparison with the best no-teacher student of the
whole study (the (augmentation, budget) cell of ``none`` with the highest mean; every distilled
cell against it, paired by seed).
"""

import collections
import glob
import json
import os.path as osp
import statistics
from typing import Dict, List, Optional, Tuple

from tools import digits_study_report
from tools.digits_study_report import machine, t_interval

TOP1 = 'accuracy/top1'
STUDENTS = ('none', 'hard', 'soft')


def begin(task: str) -> str:
    return f'<!-- digits-convergence-{task}:begin (tools/digits_convergence.py --doc) -->'


def end(task: str) -> str:
    return f'<!-- digits-convergence-{task}:end -->'


def key(result: dict) -> Tuple[str, str, int, str, int]:
    """What identifies a run: ``(task, aug, seed, arm, budget)``."""
    return result['task'], result['aug'], result['seed'], result['arm'], result['budget']


def read_results(path: Optional[str]) -> List[dict]:
    """The runs kept in the JSON-lines file ``path`` (none if it is None or absent)."""
    if not path or not osp.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def collect(work_dir: str, results_file: Optional[str] = None) -> List[dict]:
    """Every run in ``results_file`` and every ``result.json`` under ``work_dir`` (a task's
    folder), one per run, sorted."""
    runs = {key(r): r for r in read_results(results_file)}
    patterns = ('*/seed_*/teacher/result.json', '*/seed_*/steps_*/*/result.json')
    for pattern in patterns:
        for path in glob.glob(osp.join(work_dir, pattern)):
            with open(path) as f:
                result = json.load(f)
            runs[key(result)] = {**runs.get(key(result), {}), **result}  # keeps 'machine'
    return [runs[k] for k in sorted(runs)]


def _table(results: List[dict]) -> Dict[Tuple[str, str, int], Dict[int, float]]:
    """``{(aug, arm, budget): {seed: top-1}}``."""
    table: Dict[Tuple[str, str, int], Dict[int, float]] = {}
    for r in results:
        table.setdefault((r['aug'], r['arm'], r['budget']), {})[r['seed']] = r['metrics'][TOP1]
    return table


def _mean_std(values: List[float]) -> str:
    if not values:
        return '-'
    if len(values) == 1:
        return f'{values[0]:.2f}'
    return f'{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}'


def paired(a: Dict[int, float], b: Dict[int, float]) -> Tuple[str, List[float]]:
    """``a − b`` over the seeds both have: the mean with its 95 % t-interval, and the values."""
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    if not diffs:
        return '-', []
    mean, low, high = t_interval(diffs)
    if len(diffs) < 2:
        return f'{mean:+.2f} (1 seed)', diffs
    return f'{mean:+.2f} [{low:+.2f}, {high:+.2f}] (n={len(diffs)})', diffs


def best_baseline(results: List[dict]) -> Optional[Tuple[str, int]]:
    """``(aug, budget)`` of the ``none`` cell with the highest mean top-1 (None without one)."""
    cells = {(a, b): v for (a, arm, b), v in _table(results).items() if arm == 'none'}
    if not cells:
        return None
    return max(cells, key=lambda c: statistics.fmean(cells[c].values()))


def format_report(results: List[dict], command: str) -> str:
    table = _table(results)
    augs = [a for a in ('mild', 'strong') if any(k[0] == a for k in table)]
    budgets = sorted({b for (_, arm, b) in table if arm != 'teacher'})
    arms = [a for a in STUDENTS if any(k[1] == a for k in table)]
    lines = [
        'Val top-1 (%) on the 360 val images after the last epoch; mean ± sample std over the '
        'seeds (n = seeds run); gains paired by seed (same teacher and training seed) with their '
        '95 % t-interval.',
        '',
        '**Teachers** (one per augmentation and seed, reused by every student budget):',
        '',
        '| aug | steps | seeds | val top-1 | final train loss | every seed |',
        '| :-- | --: | --: | --: | --: | :-- |',
    ]
    for r_aug in augs:
        teachers = sorted(
            (r for r in results if r['arm'] == 'teacher' and r['aug'] == r_aug),
            key=lambda r: r['seed'],
        )
        if teachers:
            top1 = [r['metrics'][TOP1] for r in teachers]
            loss = [r['final_loss'] for r in teachers]
            each = ' / '.join(f'{v:.2f}' for v in top1)
            steps = '/'.join(sorted({str(r['budget']) for r in teachers}))
            lines.append(
                f'| {r_aug} | {steps} | {len(top1)} | {_mean_std(top1)} | '
                f'{statistics.fmean(loss):.3f} | {each} |'
            )
    lines += [
        '',
        '**Steps curve and paired gains:**',
        '',
        '| aug | student steps | ' + ' | '.join(arms) + ' | '
        + ' | '.join(f'{a} − none' for a in arms if a != 'none') + ' |',
        '| :-- | --: | ' + ' | '.join('--:' for _ in arms)
        + ''.join(' | --:' for a in arms if a != 'none') + ' |',
    ]  # fmt: skip
    for aug in augs:
        for budget in budgets:
            cols = [
                f'{_mean_std(list(table.get((aug, a, budget), {}).values()))} '
                f'(n={len(table.get((aug, a, budget), {}))})'
                for a in arms
            ]
            gains = [
                paired(table.get((aug, a, budget), {}), table.get((aug, 'none', budget), {}))[0]
                for a in arms
                if a != 'none'
            ]
            lines.append(f'| {aug} | {budget} | ' + ' | '.join(cols + gains) + ' |')
    best = best_baseline(results)
    if best is not None:
        base = table[(best[0], 'none', best[1])]
        lines += [
            '',
            f'**Against the best no-teacher student**: B = none, {best[0]} augmentation, '
            f'{best[1]} steps ({_mean_std(list(base.values()))}, n={len(base)}), the highest mean '
            'of all none cells; chosen on the same val images, which favours B. Each distilled '
            'cell minus B, paired by seed:',
            '',
            '| aug | student steps | arm | top-1 | − B |',
            '| :-- | --: | :-- | --: | --: |',
        ]
        for aug in augs:
            for budget in budgets:
                for arm in arms:
                    cell = table.get((aug, arm, budget), {})
                    if arm != 'none' and cell:
                        text = paired(cell, base)[0]
                        lines.append(
                            f'| {aug} | {budget} | {arm} | {_mean_std(list(cell.values()))} '
                            f'| {text} |'
                        )
    lines += ['', 'Every seed (val top-1, seeds in order):', '']
    for (aug, arm, budget), seeds in sorted(table.items()):
        each = ' / '.join(f'{s}: {seeds[s]:.2f}' for s in sorted(seeds))
        lines.append(f'- {aug}, {arm}, {budget} steps: {each}')
    walls = [r['wall_s'] for r in results]
    lines += [
        '',
        f'Regenerate with `{command}` ({len(results)} runs, {sum(walls) / 3600:.1f} h of run '
        'time, two runs at a time).',
        '',
        machines_line(results),
    ]
    return '\n'.join(lines)


def machines_line(results: List[dict]) -> str:
    """Where the runs were made, as each result records it (runs from before the tool
    recorded it are counted as not recorded), and where this report was written."""
    counts = collections.Counter(r.get('machine', 'not recorded') for r in results)
    made = '; '.join(f'{name} ({n} runs)' for name, n in sorted(counts.items()))
    return f'Runs made on: {made}. Report written on: {machine()}.'


def plot(results: List[dict], path: str) -> None:
    """Val top-1 against student steps per arm (the teacher's level dashed), and the gains."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    table = _table(results)
    augs = [a for a in ('mild', 'strong') if any(k[0] == a for k in table)]
    fig, axes = plt.subplots(len(augs), 2, figsize=(11, 4.2 * len(augs)), squeeze=False)
    for row, aug in enumerate(augs):
        ax_acc, ax_gain = axes[row]
        for arm in STUDENTS:
            cells = sorted((b, v) for (a, m, b), v in table.items() if a == aug and m == arm)
            if cells:
                xs = [b for b, _ in cells]
                means = [statistics.fmean(v.values()) for _, v in cells]
                errs = [statistics.stdev(v.values()) if len(v) > 1 else 0.0 for _, v in cells]
                ax_acc.errorbar(xs, means, yerr=errs, marker='o', capsize=3, label=arm)
            if arm == 'none':
                continue
            gains = []
            for budget, values in cells:
                _, diffs = paired(values, table.get((aug, 'none', budget), {}))
                if len(diffs) >= 2:
                    gains.append((budget, *t_interval(diffs)))
            if gains:
                ax_gain.errorbar(
                    [g[0] for g in gains],
                    [g[1] for g in gains],
                    yerr=[[g[1] - g[2] for g in gains], [g[3] - g[1] for g in gains]],
                    marker='o',
                    capsize=3,
                    label=f'{arm} − none',
                )
        teachers = [
            v for (a, m, _), t in table.items() if a == aug and m == 'teacher' for v in t.values()
        ]
        if teachers:
            level = statistics.fmean(teachers)
            ax_acc.axhline(level, linestyle='--', color='grey', label='teacher')
        ax_acc.set(xscale='log', xlabel='student steps', ylabel='val top-1 (%)')
        ax_acc.set_title(f'{aug} augmentation: mean ± std over seeds')
        ax_acc.legend(fontsize='small')
        ax_gain.axhline(0, color='grey', linewidth=0.8)
        ax_gain.set(xscale='log', xlabel='student steps', ylabel='paired gain (points)')
        ax_gain.set_title(f'{aug}: paired gains, 95 % CI')
        if ax_gain.get_legend_handles_labels()[0]:
            ax_gain.legend(fontsize='small')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_section(path: str, task: str, text: str) -> None:
    """Put ``text`` between the task's markers in ``path`` (appended if they are absent)."""
    digits_study_report.write_section(path, text, begin(task), end(task))


def summary(results: List[dict]) -> str:
    """A few lines for the terminal: per augmentation the teacher's mean and hard − none per
    budget, and the best distilled cell against the best no-teacher student (empty without
    results)."""
    table = _table(results)
    best = best_baseline(results)
    if best is None:
        return ''
    lines = []
    for aug in ('mild', 'strong'):
        budgets = sorted({b for (a, arm, b) in table if a == aug and arm == 'none'})
        teachers = [t for (a, arm, b), t in table.items() if a == aug and arm == 'teacher']
        if budgets and teachers:
            values = [v for t in teachers for v in t.values()]
            lines.append(f'  {aug:>6} teacher: {statistics.fmean(values):6.2f}')
        for budget in budgets:
            none = table[(aug, 'none', budget)]
            hard = table.get((aug, 'hard', budget), {})
            lines.append(
                f'  {aug:>6} {budget:>5} steps: none {statistics.fmean(none.values()):6.2f}'
                + (f'  hard {statistics.fmean(hard.values()):6.2f}' if hard else '')
                + f'  hard − none {paired(hard, none)[0]}'
            )
    base = table[(best[0], 'none', best[1])]
    distilled = [k for k in table if k[1] in ('hard', 'soft')]
    if distilled:
        top = max(distilled, key=lambda k: statistics.fmean(table[k].values()))
        lines.append(
            f'  best no-teacher student B: {best[0]}, {best[1]} steps '
            f'({statistics.fmean(base.values()):.2f}); best distilled: {top[1]}, {top[0]}, '
            f'{top[2]} steps ({statistics.fmean(table[top].values()):.2f}), − B '
            f'{paired(table[top], base)[0]}'
        )
    return '\n'.join(lines)
