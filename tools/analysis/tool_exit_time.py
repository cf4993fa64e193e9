"""mmdeit's tools as a user runs them, with the imports' objects frozen and without.

:func:`mmdeit.engine.freeze_startup_objects` changes a whole process, so the two settings
alternate between processes: in a temporary folder outside the checkout this tool writes a
digits config (``_base_ = 'mmdeit::digits/deit-digits-tiny_1xb64_digits.py'``, one epoch of
128 images, validation and test on 128) and an image, then for each of ``--rounds`` rounds runs
every tool of ``--tools`` once with ``MMDEIT_FREEZE_STARTUP=0`` and once without (``python -m
mmdeit TOOL ...``, the order swapped every round), timing each process from its start to its
end. ``train`` runs first in a round: ``test`` and ``infer`` read its checkpoint. One line per
process as it ends, then the best and median seconds per tool and setting; ``--out`` for the
JSON::

    python tools/analysis/tool_exit_time.py --rounds 5
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

TOOLS = ('train', 'test', 'infer')
SETTINGS = ('frozen', 'off')
CONFIG = """_base_ = 'mmdeit::digits/deit-digits-tiny_1xb64_digits.py'
train_cfg = dict(max_epochs=1)
train_dataloader = dict(dataset=dict(indices=128))  # 2 iterations
val_dataloader = dict(dataset=dict(indices=128))
test_dataloader = dict(dataset=dict(indices=128))
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--tools', nargs='+', default=list(TOOLS), choices=TOOLS)
    p.add_argument('--rounds', type=int, default=5, help='rounds of (frozen, off) per tool')
    p.add_argument('--out', help='write the results as JSON here')
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f'--rounds must be at least 1, got {args.rounds}')
    args.train_untimed = 'train' not in args.tools  # run all the same: test and infer read
    args.tools = [t for t in TOOLS if t in args.tools or t == 'train']  # its checkpoint
    return args


def _command(tool: str, work_dir: str) -> List[str]:
    checkpoint = f'{work_dir}/epoch_1.pth'
    return {
        'train': ['train', 'my.py', '--work-dir', work_dir],
        'test': ['test', 'my.py', checkpoint, '--work-dir', f'{work_dir}_test'],
        'infer': ['infer', 'digit.png', 'my.py', checkpoint],
    }[tool]


def _run(folder: Path, tool: str, setting: str) -> float:
    """Seconds of one ``python -m mmdeit TOOL`` process; its output goes to ``TOOL_SETTING.log``."""
    env = dict(os.environ, MMDEIT_FREEZE_STARTUP='0' if setting == 'off' else '1')
    env.pop('PYTHONPATH', None)  # the installed mmdeit, as a user's shell has it
    command = [sys.executable, '-m', 'mmdeit', *_command(tool, f'work_dirs/{setting}')]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (folder / f'{tool}_{setting}.log').write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f'{" ".join(command)} exited {proc.returncode}:\n{proc.stderr[-3000:]}')
    return seconds


def measure(args: argparse.Namespace, folder: Path) -> Dict[str, Dict[str, List[float]]]:
    """``{tool: {setting: [seconds per round]}}``, a line printed per process."""
    from PIL import Image
    from sklearn.datasets import load_digits

    (folder / 'my.py').write_text(CONFIG)
    digit = (load_digits().images[3] * 255 / 16).astype('uint8')  # (8, 8), a '3'
    Image.fromarray(digit).convert('RGB').save(folder / 'digit.png')
    times = {tool: {s: [] for s in SETTINGS} for tool in args.tools}
    for r in range(args.rounds):
        order = SETTINGS if r % 2 == 0 else SETTINGS[::-1]
        for tool in args.tools:
            for setting in order:
                seconds = _run(folder, tool, setting)
                times[tool][setting].append(seconds)
                print(f'round {r + 1}/{args.rounds} {tool:<5} {setting:<6} {seconds:6.2f} s',
                      flush=True)  # fmt: skip
    if args.train_untimed:
        times.pop('train')
    return times


def summary(times: Dict[str, Dict[str, List[float]]]) -> Dict[str, dict]:
    """Best and median seconds per tool and setting, and off over frozen (the medians')."""
    rows = {}
    for tool, by_setting in times.items():
        row = {s: dict(best=min(t), median=statistics.median(t)) for s, t in by_setting.items()}
        row['saved_median_s'] = row['off']['median'] - row['frozen']['median']
        row['off_over_frozen'] = row['off']['median'] / row['frozen']['median']
        rows[tool] = row
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix='mmdeit_tool_exit_') as tmp:
        times = measure(args, Path(tmp))
    rows = summary(times)
    print('tool    frozen best/median    off best/median    saved   ratio')
    for tool, row in rows.items():
        frozen, off = row['frozen'], row['off']
        print(f'{tool:<6} {frozen["best"]:8.2f} / {frozen["median"]:6.2f} '
              f'{off["best"]:7.2f} / {off["median"]:6.2f} {row["saved_median_s"]:6.2f}s '
              f'{row["off_over_frozen"]:6.3f}')  # fmt: skip
    result = dict(rounds=args.rounds, seconds=times, summary=rows)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == '__main__':
    main()
