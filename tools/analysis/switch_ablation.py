"""mmdeit with one switch of its fast path off, timed next to mmdeit (``benchmark.py --ablate``).

Each measure of the fast path that depends on the hardware has a module-level switch, read at
every call (``docs/design.md``). Which setting is faster was measured on the hosts of
``docs/benchmarks.md``; on another CPU (AMX, where the GEMMs are nearly free and PyTorch's CPU
flash attention runs its products on the tile unit) the answer can differ. ``--ablate NAME``
times mmdeit once more per switch, with that switch off during its calls only, in the same
interleaved rounds, so one run of the benchmark tells which setting a host wants.
"""

import importlib
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, Iterator, NamedTuple, Tuple

Fn = Callable[[], object]


class Switch(NamedTuple):
    """A fast-path switch: ``module.attribute`` set to ``off`` turns the measure off."""

    module: str
    attribute: str
    off: object
    sections: Tuple[str, ...]  # the benchmark's sections whose calls it changes
    doc: str


_UTILS = 'mmdeit.models.utils.'
#: The switches ``--ablate`` can turn off, by name.
SWITCHES: Dict[str, Switch] = {
    'gemm-attention': Switch(
        _UTILS + 'gemm_attention',
        'GEMM_DEVICE_TYPES',
        frozenset(),
        ('inference', 'train'),
        "bf16 attention as two GEMMs and a softmax; off: SDPA (the CPU's flash kernel)",
    ),
    'in-place-softmax': Switch(
        _UTILS + 'gemm_attention',
        'IN_PLACE_SOFTMAX',
        False,
        ('inference',),
        "the GEMM attention's softmax into the scores' memory; off: a new tensor",
    ),
    'q-scale-fold': Switch(
        _UTILS + 'gemm_attention',
        'FOLD_Q_SCALE',
        False,
        ('inference',),
        "1/sqrt(d) in q's projection; off: q scaled in the attention",
    ),
    'cpu-kernels': Switch(
        _UTILS + 'cpu_kernels',
        'USE_CPU_KERNELS',
        False,
        ('inference',),
        "mmdeit's C++ kernels: bf16 softmax, pre-norm, add, heads' split, and with them the "
        "tile-unit, bf16 and fp32 attention; off: ATen's ops",
    ),
    'amx-attention': Switch(
        _UTILS + 'amx_attention',
        'USE_AMX_ATTENTION',
        False,
        ('inference', 'train'),
        'bf16 attention on the AMX tile unit, heads read as views; off: the GEMM attention',
    ),
    'bf16-attention': Switch(
        _UTILS + 'bf16_attention',
        'USE_BF16_ATTENTION',
        False,
        ('inference',),
        'bf16 attention in vdpbf16ps register blocks (AVX-512 BF16 without AMX), heads read '
        'as views; off: the GEMM attention',
    ),
    'amx-attention-grad': Switch(
        _UTILS + 'amx_attention_grad',
        'USE_AMX_ATTENTION_GRAD',
        False,
        ('train',),
        "the tile-unit attention's backward on the tile unit too; off: bmm calls from P",
    ),
    'fp32-attention': Switch(
        _UTILS + 'fp32_attention',
        'USE_FP32_ATTENTION',
        False,
        ('inference',),
        'fp32 attention in registers and L1/L2, heads read as views; off: SDPA',
    ),
    'amx-weight-grad': Switch(
        _UTILS + 'amx_linear_grad',
        'USE_AMX_WEIGHT_GRAD',
        False,
        ('train',),
        "training linears' weight and bias gradients on the AMX tile unit; off: autocast's",
    ),
    'amx-linear': Switch(
        _UTILS + 'amx_linear',
        'USE_AMX_LINEAR',
        False,
        ('inference', 'train'),
        "bf16 linears on the AMX tile unit, GELU and shortcut in the GEMM; off: oneDNN's",
    ),
    'layer-norm-grad': Switch(
        _UTILS + 'layer_norm_grad',
        'USE_LAYER_NORM_GRAD',
        False,
        ('train',),
        "training's pre-norms written in bf16, backward from the bf16 gradient; off: autocast's",
    ),
    'patch-gemm': Switch(
        _UTILS + 'patch_gemm',
        'USE_PATCH_GEMM',
        False,
        ('inference', 'train'),
        "the patch embedding as one GEMM on the patches; off: mmcv's convolution",
    ),
    'drop-add': Switch(
        _UTILS + 'drop_add',
        'USE_DROP_ADD',
        False,
        ('train',),
        "stochastic depth's residual sum in one pass each way under bf16 autocast; off: ATen's",
    ),
    'prepack': Switch(
        _UTILS + 'onednn_linear',
        'PREPACK',
        False,
        ('inference',),
        "oneDNN's weights kept in its blocked layout; off: row-major, reordered in every call",
    ),
    'bf16-onednn': Switch(
        _UTILS + 'onednn_linear',
        'BF16_SUPPORTED',
        False,
        ('inference',),
        "bf16 linears through oneDNN (GELU fused, weight copies kept); off: autocast's ops",
    ),
    'fp32-onednn': Switch(
        _UTILS + 'onednn_linear',
        'FP32_ONEDNN',
        False,
        ('inference',),
        "fp32 linears through oneDNN (GELU fused); off: ATen's (MKL)",
    ),
    'skip-dropped': Switch(
        _UTILS + 'drop_path',
        'SKIP_DEVICE_TYPES',
        frozenset(),
        ('train',),
        "stochastic depth skips the dropped samples' branches; off: computed, multiplied by 0",
    ),
}


def ablation_name(switch: str) -> str:
    """The benchmark's name for mmdeit with ``switch`` off, e.g. ``'mmdeit (no prepack)'``."""
    return f'mmdeit (no {switch})'


@contextmanager
def switched_off(switch: str) -> Iterator[None]:
    """``switch`` (a key of :data:`SWITCHES`) off inside the block, restored after."""
    s = SWITCHES[switch]
    module = importlib.import_module(s.module)
    saved = getattr(module, s.attribute)
    setattr(module, s.attribute, s.off)
    try:
        yield
    finally:
        setattr(module, s.attribute, saved)


def without(fn: Fn, switch: str) -> Fn:
    """``fn`` with ``switch`` off during its call."""

    def call():
        with switched_off(switch):
            return fn()

    return call


def ablations(switches: Iterable[str], mmdeit: Fn, section: str) -> Dict[str, Fn]:
    """``{ablation_name(s): mmdeit's call with s off}`` for the switches that change
    ``section`` ('inference' or 'train')."""
    return {
        ablation_name(s): without(mmdeit, s) for s in switches if section in SWITCHES[s].sections
    }
