"""The mmdeit demo: does a convnet teacher help a DeiT where data is scarce? (scikit-learn digits)

``make demo`` runs ``python tools/demo.py``: one point of the digits study
(``tools/digits_study.py``, protocol and full results in ``docs/digits.md``), chosen from that
study as the one that tells most (see :data:`SIZE` and :data:`AUG`): for each seed, a stratified
subset of the digits train split, the ResNet teacher trained on it, then the small DeiT without
distillation, with hard and with soft distillation from that teacher, all with the same
augmentation and number of steps. It prints one line per finished run, then the table (mean ±
std over the seeds, the paired gains of distillation with their 95 % interval, each head's
top-1 and the agreement with the teacher) and writes a plot. The full mmengine logs of every
run are in ``<work-dir>/<aug>/<size>/seed_<seed>/``, not on the terminal. About 8 minutes on 2
CPU cores (two runs at a time, one thread each); finished runs are kept and not run again.

Examples::

    python tools/demo.py                                   # the demo
    python tools/demo.py --seeds 0 1 2 3 4 --size 0.25     # another point of the study
    python tools/demo.py --student-steps 20 --teacher-steps 10 --work-dir work_dirs/quick
"""

import argparse
import os.path as osp
import shlex
import sys
from typing import List

if not __package__:  # run as a script (make demo): the checkout's tools/ package is importable
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from tools import digits_convergence_report, digits_study  # noqa: E402

#: The demo's point of the study: the cheapest one where distillation's gain is clear
#: (docs/digits.md): strong augmentation, all 1,437 training images, the study's 690 student
#: steps; 4 seeds, two at a time. The convergence study (issue 27) found that this gain shrinks
#: with more steps and ties the best no-teacher student at convergence, so the demo prints that
#: study's committed summary after its own table. With the mild recipe (``--aug mild``) neither
#: study found a gain.
SIZE = 1.0
AUG = 'strong'
SEEDS = (0, 1, 2, 3)
#: The convergence study's committed runs (``tools/digits_convergence.py``, issue 27): the demo
#: prints their summary after its own table, since its point is far from converged.
CONVERGENCE = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'docs',
                       'digits_convergence.jsonl')  # fmt: skip
#: The same protocol's committed runs on cluttered digits (a 32x32 canvas, the digit at a random
#: place among fragments of others), where the convnet's bias matters: the demo prints them last,
#: since there the gain grows with the steps instead of vanishing.
CLUTTERED = osp.join(osp.dirname(CONVERGENCE), 'cluttered_digits_convergence.jsonl')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Teacher vs DeiT students on scarce digits')
    parser.add_argument('--work-dir', default='work_dirs/digits_demo', help='output folder')
    parser.add_argument('--size', type=float, default=SIZE, help='fraction of the train split')
    parser.add_argument('--aug', default=AUG, choices=digits_study.AUGS)
    parser.add_argument('--seeds', type=int, nargs='+', default=list(SEEDS))
    parser.add_argument('--jobs', type=int, default=2, help='runs at a time (1 thread each)')
    parser.add_argument('--student-steps', type=int, default=digits_study.STUDENT_STEPS)
    parser.add_argument('--teacher-steps', type=int, default=digits_study.TEACHER_STEPS)
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f'--seeds must be distinct, got {args.seeds}')
    return args


def study_argv(args: argparse.Namespace) -> List[str]:
    """The ``tools/digits_study.py`` arguments of this demo."""
    argv = ['--work-dir', args.work_dir, '--sizes', f'{args.size:g}', '--augs', args.aug]
    argv += ['--seeds', *map(str, args.seeds), '--jobs', str(args.jobs)]
    argv += ['--student-steps', str(args.student_steps)]
    argv += ['--teacher-steps', str(args.teacher_steps)]
    return argv


def print_committed(path: str, task: str, lead: str) -> None:
    """Print the summary of a convergence study's committed runs of ``task`` in the JSON-lines
    file ``path``, said to be those and not the demo's (nothing if there are none)."""
    runs = [r for r in digits_convergence_report.read_results(path) if r['task'] == task]
    if not runs:
        return
    seeds = len({r['seed'] for r in runs})
    print(
        f'\n{lead} ({len(runs)} runs, {seeds} seeds; committed in '
        f'docs/{osp.basename(path)}, not run by the demo; protocol and intervals in '
        "docs/digits.md): val top-1 by student steps, means over the seeds, each seed's "
        'teacher trained once for 2,760 steps.\n' + digits_convergence_report.summary(runs),
        flush=True,
    )


def main(argv=None) -> List[dict]:
    """Run the demo's point of the study; return every run's result."""
    args = parse_args(argv)
    print(
        f'mmdeit demo: one point of the digits study ({args.aug} augmentation, '
        f'{args.size:.0%} of the training images, seeds {args.seeds}). With the mild '
        'augmentation the study found no gain from distillation at any size; this is the '
        'cheapest point where the gain is clear, and it is far from converged: see '
        'docs/digits.md for all of it.',
        flush=True,
    )
    command = shlex.join(['python', 'tools/demo.py', *(sys.argv[1:] if argv is None else argv)])
    results = digits_study.main(study_argv(args), command=command)
    print_committed(
        CONVERGENCE,
        'digits',
        'This point is far from converged, and its gain shrinks with the steps. The '
        'convergence study',
    )
    print_committed(
        CLUTTERED,
        'cluttered',
        "Where the convnet's bias matters, the same protocol on cluttered digits",
    )
    return results


if __name__ == '__main__':
    main()
