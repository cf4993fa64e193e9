"""The demo's report: the table and curves of one seed, mean ± std over seeds into a doc.

Used by ``tools/demo.py``; the seeds table goes between the markers :data:`BEGIN` and
:data:`END` of a Markdown file (``docs/digits.md``), the text around them kept.
"""

import os
import os.path as osp
import platform
import re
import statistics
from typing import Dict, List, Sequence

BEGIN = '<!-- digits-seeds:begin (written by tools/demo.py --doc) -->'
END = '<!-- digits-seeds:end -->'


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
