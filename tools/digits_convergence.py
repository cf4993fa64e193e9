"""Does distillation's gain survive convergence? The digits study over student steps (issue 27).

For every task (scikit-learn's digits, or the cluttered, translated digits), augmentation and
seed it trains the ResNet teacher once, with a fixed budget (:data:`TEACHER_STEPS`), on all
training images, then the DeiT students without (``none``) and with hard (``hard``; ``soft`` on
request) distillation from that teacher at every student budget (:data:`STEPS`): the budgets
differ in the student only, and a seed fixes the teacher and every student's training seed, so
the arms are paired. Every run is validated once, after its last epoch, on the 360 val images.
The protocol is in ``docs/digits.md`` ("At convergence, against the best baseline");
:mod:`tools.digits_convergence_report` makes the tables (steps curve, paired gains, the
comparison with the best no-teacher student of the whole study) and the plot.

One line per finished run goes to the terminal; every run's mmengine logs stay in its folder
(``<work-dir>/<task>/<aug>/seed_<seed>/{teacher,steps_<n>/<arm>}/``) with ``result.json``. A
finished run is not run again, and with ``--results FILE`` every finished run is also kept in
a JSON-lines file that can be committed: the report reads both, so a study continued on
another machine (where the teachers are trained again) reports all of it.

Run order: seed by seed (both augmentations of a seed side by side), the budgets from the
smallest up, ``none`` then ``hard`` at each; a cut-short study has whole seeds.

Examples::

    python tools/digits_convergence.py --results docs/digits_convergence.jsonl --doc docs/digits.md
    python tools/digits_convergence.py --task cluttered --seeds 0 1 --steps 690 1380
    python tools/digits_convergence.py --arms soft --steps 690      # soft, after none and hard
    python tools/digits_convergence.py --report-only --results docs/digits_convergence.jsonl
"""

import argparse
import json
import multiprocessing as mp
import os
import os.path as osp
import shlex
import sys
import time
from typing import Dict, List, Optional, Tuple

if not __package__:  # run as a script: the checkout's tools/ package is importable
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from tools import digits_convergence_report as report  # noqa: E402
from tools.digits_study_common import (  # noqa: E402
    AUGS,
    SEEDS,
    last_val_hook,
    load_result,
    run_config,
    save_result,
    train_runner,
    worker_output,
)

#: Per task: the config (under configs/) of each arm and the input size of the strong pipeline.
TASKS: Dict[str, dict] = {
    'digits': dict(
        img_size=16,
        teacher='digits/resnet-digits_1xb64_digits',
        none='digits/deit-digits-tiny_1xb64_digits',
        hard='digits/deit-digits-tiny-distilled-hard_1xb64_digits',
        soft='digits/deit-digits-tiny-distilled-soft_1xb64_digits',
    ),
    'cluttered': dict(
        img_size=32,
        teacher='cluttered_digits/resnet-cluttered-digits_1xb64_cluttered-digits',
        none='cluttered_digits/deit-cluttered-digits-tiny_1xb64_cluttered-digits',
        hard='cluttered_digits/deit-cluttered-digits-tiny-distilled-hard_1xb64_cluttered-digits',
        soft='cluttered_digits/deit-cluttered-digits-tiny-distilled-soft_1xb64_cluttered-digits',
    ),
}
STUDENT_ARMS = ('none', 'hard', 'soft')
#: The protocol's student budgets (optimisation steps, batch 64) and the teacher's fixed one.
STEPS = (690, 1380, 2760, 5520)
TEACHER_STEPS = 2760


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Distillation gain over student steps')
    parser.add_argument('--task', default='digits', choices=sorted(TASKS))
    parser.add_argument('--work-dir', default='work_dirs/digits_convergence', help='output folder')
    parser.add_argument('--steps', type=int, nargs='+', default=list(STEPS), help='student steps')
    parser.add_argument('--teacher-steps', type=int, default=TEACHER_STEPS)
    parser.add_argument('--augs', nargs='+', default=list(AUGS), choices=AUGS)
    parser.add_argument('--seeds', type=int, nargs='+', default=list(SEEDS))
    parser.add_argument('--arms', nargs='+', default=['none', 'hard'], choices=STUDENT_ARMS)
    parser.add_argument('--jobs', type=int, default=2, help='cells run in parallel (1 thread each)')
    parser.add_argument('--results', help='a JSON-lines file that keeps every finished run')
    parser.add_argument('--report-only', action='store_true', help='tables from finished runs')
    parser.add_argument('--doc', help='write the report between the markers of this Markdown file')
    args = parser.parse_args(argv)
    for name in ('teacher_steps', 'jobs'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if min(args.steps) < 1:
        parser.error(f'--steps must be >= 1, got {args.steps}')
    for name in ('steps', 'seeds'):
        if len(set(getattr(args, name))) != len(getattr(args, name)):
            parser.error(f'--{name} must be distinct, got {getattr(args, name)}')
    args.steps = sorted(args.steps)
    args.arms = [a for a in STUDENT_ARMS if a in args.arms]
    return args


def run_dir(args, aug: str, seed: int, arm: str, steps: Optional[int] = None) -> str:
    """A run's folder: ``<work>/<task>/<aug>/seed_<s>/`` + ``teacher`` or ``steps_<n>/<arm>``."""
    cell = osp.join(args.work_dir, args.task, aug, f'seed_{seed}')
    return osp.join(cell, 'teacher') if arm == 'teacher' else osp.join(cell, f'steps_{steps}', arm)


def train_one(args, aug: str, seed: int, arm: str, steps: int, teacher_ckpt=None) -> dict:
    """Train one run in this process; its result (also in its folder's ``result.json``)."""
    task = TASKS[args.task]
    work_dir = run_dir(args, aug, seed, arm, steps)
    cfg = run_config(task[arm], aug, seed, steps, work_dir, img_size=task['img_size'])
    if arm != 'teacher' and 'teacher' in cfg.model:
        cfg.model.teacher_ckpt = teacher_ckpt
    last = last_val_hook()
    fields = train_runner(cfg, hooks=[last])
    result = dict(
        task=args.task,
        aug=aug,
        seed=seed,
        arm=arm,
        budget=steps,
        metrics=last.metrics,
        **fields,
    )
    save_result(work_dir, result)
    return result


_TERMINAL_FD: Optional[int] = None


def _terminal_fd() -> int:
    """This process's standard output as it was before the first cell redirected it (a worker
    runs several cells; the redirection of one stays until the next)."""
    global _TERMINAL_FD
    if _TERMINAL_FD is None:
        _TERMINAL_FD = os.dup(1)
    return _TERMINAL_FD


def run_cell(cell: Tuple[str, int], args: argparse.Namespace, redirect: bool = True) -> List[dict]:
    """The teacher of one (aug, seed), then its students by budget and arm; their results.

    Finished runs are read back, not run again. Each run, once finished, prints its line to the
    terminal and (with ``args.results``) is appended to the results file. With ``redirect``
    this process's stdout and stderr go to the cell's ``cell.log`` (as in the study's worker
    processes); the run lines still reach the terminal.
    """
    import torch

    import mmdeit  # noqa: F401  (registers modules)

    aug, seed = cell
    cell_dir = osp.dirname(run_dir(args, aug, seed, 'teacher'))
    os.makedirs(cell_dir, exist_ok=True)
    torch.set_num_threads(1)
    runs = [('teacher', args.teacher_steps)] + [(a, s) for s in args.steps for a in args.arms]
    results = []
    terminal = os.fdopen(os.dup(_terminal_fd()), 'w')
    with worker_output(osp.join(cell_dir, 'cell.log'), redirect):
        teacher_ckpt = None
        for arm, steps in runs:
            if arm == 'teacher' and not ({'hard', 'soft'} & set(args.arms)):
                continue  # the no-teacher students need none
            result = load_result(osp.join(run_dir(args, aug, seed, arm, steps), 'result.json'))
            if result is None or result.get('budget') != steps:
                result = train_one(args, aug, seed, arm, steps, teacher_ckpt)
                result['reused'] = False
            else:
                result['reused'] = True
            if arm == 'teacher':
                teacher_ckpt = result['checkpoint']
            if args.results:
                keep(args.results, result)
            terminal.write(f'{time.strftime("%H:%M:%S")} {describe(result)}\n')
            terminal.flush()
            results.append(result)
    terminal.close()
    return results


def _run_cell_done(payload) -> Tuple[str, int]:
    run_cell(*payload)
    return payload[0]


def describe(result: dict) -> str:
    m = result['metrics']
    line = (
        f'{result["task"]} {result["aug"]:>6} seed {result["seed"]} {result["arm"]:>7} '
        f'{result["budget"]:>5} steps: top-1 {m.get("accuracy/top1", 0.0):6.2f}'
    )
    if 'per_head/dist_teacher_agreement' in m:
        line += f'  dist=teacher {m["per_head/dist_teacher_agreement"]:6.2f}'
    line += f'  final loss {result["final_loss"]:.3f}'
    return line + (' (done before)' if result.get('reused') else f'  {result["wall_s"]:.0f} s')


def keep(path: str, result: dict) -> None:
    """Append ``result`` to the JSON-lines file ``path`` unless that run is in it already (one
    write of one line: the two workers' lines do not mix)."""
    known = {report.key(r) for r in report.read_results(path)}
    if report.key(result) not in known:
        record = {k: v for k, v in result.items() if k not in ('checkpoint', 'reused')}
        record.setdefault('machine', report.machine())  # where the run was made, for the report
        with open(path, 'a') as f:
            f.write(json.dumps(record, sort_keys=True) + '\n')


def main(argv=None) -> List[dict]:
    """Run the study's cells (or only report); return every result of the task."""
    args = parse_args(argv)
    cells = [(aug, seed) for seed in args.seeds for aug in args.augs]
    if not args.report_only:
        runs = len(cells) * (len(args.steps) * len(args.arms) + 1)
        print(
            f'digits convergence ({args.task}): {len(cells)} cells, up to {runs} runs, '
            f'{args.jobs} at a time; logs in {args.work_dir}/{args.task}/<aug>/seed_<seed>/',
            flush=True,
        )
        start = time.perf_counter()
        with mp.get_context('spawn').Pool(args.jobs) as pool:  # the workers print a line a run
            for aug, seed in pool.imap_unordered(_run_cell_done, [(c, args) for c in cells]):
                minutes = (time.perf_counter() - start) / 60
                print(f'cell {aug} seed {seed} done ({minutes:.0f} min)', flush=True)
    results = report.collect(osp.join(args.work_dir, args.task), args.results)
    results = [r for r in results if r['task'] == args.task]
    command = shlex.join(
        ['python', 'tools/digits_convergence.py', *(sys.argv[1:] if argv is None else argv)]
    )
    text = report.format_report(results, command=command)
    print('\n' + text)
    if results:
        os.makedirs(args.work_dir, exist_ok=True)  # a report from the results file alone
        report.plot(results, osp.join(args.work_dir, f'{args.task}_convergence.png'))
    if args.doc:
        report.write_section(args.doc, args.task, text)
    return results


if __name__ == '__main__':
    main()
