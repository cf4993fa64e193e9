"""The report of ``benchmark.py``: the machine it ran on, and the table it prints."""

import contextlib
import os
import platform
import re

import torch


def cpu_name(default: str) -> str:
    """The CPU's model name from ``/proc/cpuinfo``, or ``default`` where it cannot be read."""
    with contextlib.suppress(OSError, AttributeError), open('/proc/cpuinfo') as f:
        return re.search(r'model name\s*:\s*(.+)', f.read()).group(1).strip()
    return default


def machine_info(args) -> dict:
    """The host, versions, thread count, dtype, attention kernel, load and malloc setting of
    this run (``args``: benchmark.py's); the GPU with ``--device cuda``."""
    from mmdeit.engine import freed_memory_setting

    info = dict(
        cpu=cpu_name(default=platform.processor() or platform.machine()),
        logical_cpus=os.cpu_count(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        python=platform.python_version(),
        device=args.device,
        dtype=args.dtype,
        sdpa=args.sdpa,
        loadavg_start=list(os.getloadavg()),
        # the option, and the thresholds kept in this process (by this or an earlier call)
        malloc=dict(option=args.malloc, kept=freed_memory_setting()),
    )
    if args.device == 'cuda':
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return info


def print_report(report: dict) -> None:
    """Print one dtype's report as a table: a row per library and section, the roofline
    lines, the distillation step and the memory rows."""
    m, diff = report['machine'], max(report['parity_max_abs_diff'].values())
    print(f'\n{m["cpu"]} | {m["threads"]} threads | torch {m["torch"]} | {m["device"]}', end=' ')
    order_seed = report['args'].get('order_seed')  # absent in reports of older versions
    print(f'{m["dtype"]} | logits agree to {diff:.1e} | order seed {order_seed}')
    for name, peer_diff in report.get('peers_max_abs_diff', {}).items():
        print(f'{name}: output within {peer_diff:.1e} of its eager model')
    columns = 'best s|median s|cpu s|img/s|GFLOP/img|GFLOP/s|roofline|/mmdeit'.split('|')
    head = f'{"":<16}{"library":<30}' + ''.join(f'{c:>10}' for c in columns)
    print(head + '\n' + '-' * len(head))
    for section in ('inference', 'train'):
        label = f'{section} b={report[section]["batch"]}'
        for name, r in report[section]['results'].items():
            keys = ('best_s', 'median_s', 'best_cpu_s', 'img_per_s')
            cells = [f'{r[k]:>10.3f}' for k in keys] + [f'{r["flops_per_image"] / 1e9:>10.3f}']
            cells += [f'{r["gflops_per_s"]:>10.1f}', f'{r["roofline_fraction"]:>10.0%}']
            print(f'{label:<16}{name:<30}' + ''.join(cells) + f'{r["over_mmdeit_best"]:>10.3f}')
            label = ''
        sec = report[section]
        print(
            f'{"":<16}matmul peak {sec["mm_peak_gflops"]:.1f} GFLOP/s (n x n), '
            f"{sec['mm_shapes_gflops']:.1f} at the model's GEMM shapes: mmdeit at "
            f'{sec["results"]["mmdeit"]["shapes_roofline_fraction"]:.0%} of it'
        )
    for name, r in report.get('distillation', {}).get('results', {}).items():
        print(f'{"distillation":<16}{name:<26}{r["best_s"]:>10.3f}{r["median_s"]:>10.3f}')
    for r in report.get('memory', []):
        label, cp = f'memory b={r["batch"]}', f'{r["arch"][:16]} cp={r["with_cp"]}'
        print(
            f'{label:<16}{cp:<26}peak {r["peak_mb"]:.0f} MiB (+{r["step_increase_mb"]:.0f} '
            f'in the step), tensors {r["tensor_peak_mb"]:.0f} MiB, {r["step_s"]:.2f} s'
        )
