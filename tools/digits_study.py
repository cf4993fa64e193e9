"""Does distillation help a DeiT where data is scarce? The digits study over training-set size.

For every training-set size (a stratified subset of the digits train split, fixed by the seed),
augmentation strength and seed it trains, with the configs of ``configs/digits/``: the ResNet
teacher on that subset, then the DeiT student without distillation, with hard and with soft
distillation from that teacher, all on the same images with the same augmentation and the same
number of optimisation steps whatever the size (the epochs grow as the subset shrinks). Every
run is validated once, after its last epoch, on the whole 360-image val split, with each head's
top-1 and the agreement with the teacher (``PerHeadAccuracy``). The protocol is in
``docs/digits.md``; :mod:`tools.digits_study_report` makes the tables and plots;
:mod:`tools.digits_study_common` holds what the study's modules share (factors, arms, schedule,
folders, result files).

One line per finished run goes to the terminal; the mmengine logs of every run stay in its work
dir (``<work-dir>/<aug>/<size>/seed_<seed>/<arm>/``), with ``result.json``. A run whose
``result.json`` exists is not run again, so an interrupted study continues where it stopped.

The arms ``none-simmim`` and ``hard-simmim`` are the students of ``none`` and ``hard`` fine-tuned
from a SimMIM-pretrained encoder (``configs/simmim/``, issue 17's question: does masked-image
pretraining help where labels are scarce?). The pretraining runs once per seed, before the cells,
on the whole 1,437-image train split with its labels unused (the images a labelled subset leaves
out are unlabelled data), in ``<work-dir>/simmim/seed_<seed>/`` (by
``tools/digits_study_pretrain.py``); the fine-tuned arms differ from their from-scratch partners
in the initial backbone weights only.

Examples::

    python tools/digits_study.py                           # the declared study (hours on 2 cores)
    python tools/digits_study.py --sizes 0.1 --augs strong --seeds 0 1 2 3 4 --jobs 2
    python tools/digits_study.py --report-only --doc docs/digits.md
    python tools/digits_study.py --arms teacher none hard none-simmim hard-simmim \
        --doc docs/simmim.md
"""

import argparse
import multiprocessing as mp
import os
import os.path as osp
import shlex
import sys
import time
from typing import List, Optional, Tuple

if not __package__:  # run as a script: the checkout's tools/ package is importable
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from tools import digits_study_report as report  # noqa: E402
from tools.digits_study_common import (  # noqa: E402
    ARMS,
    AUGS,
    PRETRAIN_EPOCHS,
    SEEDS,
    SIMMIM_ARMS,
    SIZES,
    STRONG_MIX_PROBS,  # noqa: F401  (re-exported: the tests and tools/demo.py read it here)
    STRONG_PIPELINE,  # noqa: F401
    STUDENT_STEPS,
    STUDY_ARMS,
    TEACHER_STEPS,
    epochs_for,  # noqa: F401
    last_val_hook,
    load_result,
    pretrain_dir,
    run_config,
    run_dir,
    save_result,
    train_runner,
    worker_output,
)
from tools.digits_study_pretrain import pretrain_payload  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Distillation gain over training-set size')
    parser.add_argument('--work-dir', default='work_dirs/digits_study', help='output folder')
    parser.add_argument('--sizes', type=float, nargs='+', default=list(SIZES), help='fractions')
    parser.add_argument('--augs', nargs='+', default=list(AUGS), choices=AUGS)
    parser.add_argument('--seeds', type=int, nargs='+', default=list(SEEDS))
    parser.add_argument('--arms', nargs='+', default=list(STUDY_ARMS), choices=[a for a, _ in ARMS])
    parser.add_argument('--student-steps', type=int, default=STUDENT_STEPS)
    parser.add_argument('--teacher-steps', type=int, default=TEACHER_STEPS)
    parser.add_argument(
        '--pretrain-epochs',
        type=int,
        default=PRETRAIN_EPOCHS,
        help='epochs of the SimMIM pretraining of the *-simmim arms (on all 1,437 images)',
    )
    parser.add_argument('--jobs', type=int, default=2, help='cells run in parallel (1 thread each)')
    parser.add_argument('--report-only', action='store_true', help='tables from finished runs')
    parser.add_argument('--doc', help='write the report between the markers of this Markdown file')
    args = parser.parse_args(argv)
    for size in args.sizes:
        if not 0.0 < size <= 1.0:
            parser.error(f'--sizes must be fractions in (0, 1], got {size}')
    if 'teacher' not in args.arms and set(args.arms) & {'hard', 'soft', 'hard-simmim'}:
        parser.error('--arms hard/soft/hard-simmim need the teacher arm (it trains their teacher)')
    for name in ('student_steps', 'teacher_steps', 'pretrain_epochs', 'jobs'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1')
    order = [a for a, _ in ARMS]
    args.arms = sorted(set(args.arms), key=order.index)  # run order: the teacher first
    return args


def study_config(arm: str, aug: str, size: float, seed: int, steps: int, work_dir: str):
    """The config of one run: the shipped digits config on the subset, with the study's schedule."""
    return run_config(dict(ARMS)[arm], aug, seed, steps, work_dir, size=size)


def train_one(
    arm: str, aug: str, size: float, seed: int, args, teacher_ckpt=None, pretrained=None
) -> dict:
    """Train one run in this process; its result (also written to ``result.json``).

    ``pretrained`` (a *-simmim arm's SimMIM checkpoint) replaces the fine-tune config's.
    """
    steps = args.teacher_steps if arm == 'teacher' else args.student_steps
    work_dir = run_dir(args.work_dir, aug, size, seed, arm)
    cfg = study_config(arm, aug, size, seed, steps, work_dir)
    if teacher_ckpt is not None and 'teacher' in cfg.model:
        cfg.model.teacher_ckpt = teacher_ckpt
    if arm in SIMMIM_ARMS:
        init = cfg.model.init_cfg[-1]
        if init.type != 'Pretrained':
            raise ValueError(f'{arm}: the last model.init_cfg entry must be Pretrained: {init}')
        init.checkpoint = pretrained
    last = last_val_hook()
    fields = train_runner(cfg, hooks=[last])
    result = dict(arm=arm, aug=aug, size=size, seed=seed, metrics=last.metrics, **fields)
    save_result(work_dir, result)
    return result


def run_cell(
    cell: Tuple[str, float, int], args: argparse.Namespace, redirect: bool = True
) -> List[dict]:
    """The arms of one (aug, size, seed) in order, skipping finished ones; their results.

    Args:
        cell: ``(aug, size, seed)``.
        args: The study's arguments.
        redirect: Send this process's stdout and stderr (file descriptors 1 and 2, so the
            Runner's terminal output too) to the cell's ``cell.log``, as the study's worker
            processes do. Defaults to True.
    """
    import torch

    import mmdeit  # noqa: F401  (registers modules)

    aug, size, seed = cell
    cell_dir = osp.dirname(run_dir(args.work_dir, aug, size, seed, 'x'))
    os.makedirs(cell_dir, exist_ok=True)
    torch.set_num_threads(1)
    results = []
    with worker_output(osp.join(cell_dir, 'cell.log'), redirect):
        teacher_ckpt = None
        pretrained = osp.join(pretrain_dir(args.work_dir, seed), 'result.json')
        for arm in args.arms:
            path = osp.join(run_dir(args.work_dir, aug, size, seed, arm), 'result.json')
            result = load_result(path)
            if result is None:
                ckpt = load_result(pretrained)['checkpoint'] if arm in SIMMIM_ARMS else None
                result = train_one(arm, aug, size, seed, args, teacher_ckpt, ckpt)
                result['reused'] = False
            else:
                result['reused'] = True
            if arm == 'teacher':
                teacher_ckpt = result['checkpoint']
            results.append(result)
    return results


def _run_cell(payload):
    return run_cell(*payload)


def describe(result: dict) -> str:
    m = result['metrics']
    line = (
        f'{result["aug"]:>6} {result["size"]:>5g} ({result["images"]:>4} img) '
        f'seed {result["seed"]} {result["arm"]:>7}: top-1 {m.get("accuracy/top1", 0.0):6.2f}'
    )
    if 'per_head/cls_top1' in m:
        line += f'  cls {m["per_head/cls_top1"]:6.2f} dist {m.get("per_head/dist_top1", 0):6.2f}'
    if 'per_head/dist_teacher_agreement' in m:
        line += f'  dist=teacher {m["per_head/dist_teacher_agreement"]:6.2f}'
    reused = ' (done before)' if result.get('reused') else f'  {result["wall_s"]:.0f} s'
    return line + reused


def main(argv=None, command: Optional[str] = None) -> List[dict]:
    """Run the study's cells (or only report); return every result.

    Args:
        argv: The command-line arguments. Defaults to None: ``sys.argv[1:]``.
        command: How the report names the command that regenerates it. Defaults to None:
            'python tools/digits_study.py' with ``argv``.
    """
    args = parse_args(argv)
    # smallest size first, both augmentations, all seeds: a cut-short study has whole points
    cells = [(aug, size, seed) for size in args.sizes for aug in args.augs for seed in args.seeds]
    results: List[dict] = []
    if not args.report_only:
        total = len(cells) * len(args.arms)
        print(
            f'digits study: {len(cells)} cells x {len(args.arms)} runs, {args.jobs} at a time; '
            f'logs in {args.work_dir}/<aug>/<size>/seed_<seed>/',
            flush=True,
        )
        start = time.perf_counter()
        ctx = mp.get_context('spawn')
        with ctx.Pool(args.jobs) as pool:
            if set(args.arms) & set(SIMMIM_ARMS):  # every seed's encoder before the cells
                payloads = [(seed, args) for seed in args.seeds]
                for pre in pool.imap_unordered(pretrain_payload, payloads):
                    done = ' (done before)' if pre['reused'] else f'  {pre["wall_s"]:.0f} s'
                    print(
                        f'SimMIM seed {pre["seed"]}: {pre["epochs"]} epochs on {pre["images"]} '
                        f'images, final L1 loss {pre["final_loss"]:.3f}{done}',
                        flush=True,
                    )
            for cell_results in pool.imap_unordered(_run_cell, [(c, args) for c in cells]):
                for result in cell_results:
                    results.append(result)
                    elapsed = (time.perf_counter() - start) / 60
                    print(
                        f'[{len(results):>3}/{total}] {describe(result)}  ({elapsed:.0f} min)',
                        flush=True,
                    )
    results = report.collect(args.work_dir)
    if command is None:
        command = shlex.join(
            ['python', 'tools/digits_study.py', *(sys.argv[1:] if argv is None else argv)]
        )
    text = report.format_report(results, command=command)
    print('\n' + text)
    report.plot(results, osp.join(args.work_dir, 'digits_study.png'))
    if args.doc:
        report.write_section(args.doc, text)
    return results


if __name__ == '__main__':
    main()
