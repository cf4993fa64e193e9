"""The distilled DeiT of mmdeit, mmpretrain 1.2 and timm with the same weights, and its FLOPs.

Used by ``benchmark.py``. Every model here has ``logits(x) -> (cls_logits, dist_logits)`` for
training and ``predict(x)`` (the mean of both heads) for inference. FLOPs are counted by torch's
``FlopCounterMode`` with torch's own formulas, registered for the ops its table lacks.
"""

import contextlib
import json
import math
import time
from argparse import ArgumentParser, Namespace
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils import flop_counter

try:  # imported as tools.analysis.deit_models
    from .switch_ablation import switched_off
except ImportError:  # run as a script's neighbour: this folder is on sys.path
    from switch_ablation import switched_off

#: mmdeit with its speed measures off: the ablation, timed as one more library.
REFERENCE = 'mmdeit (fast_path=False)'
Fn = Callable[[], object]


class DeiTModel(nn.Module):
    """A distilled ViT and a DeiT head, mmdeit's or mmpretrain's (the same state_dict keys)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def logits(self, x: torch.Tensor):
        cls_token, dist_token = self.backbone(x)[-1]  # (B, C) each
        return self.head.layers.head(cls_token), self.head.layers.head_dist(dist_token)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, num_classes)


class TimmModel(nn.Module):
    """timm's ``VisionTransformerDistilled`` behind the same ``logits`` and ``predict``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        model.set_distilled_training(True)

    def logits(self, x: torch.Tensor):
        return self.model(x)  # (cls, dist) in train mode

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # their mean in eval mode


def add_model_args(parser: ArgumentParser) -> None:
    """The model's command-line arguments, read by :func:`build_deit` and :func:`build_models`:
    ``--arch`` (default 'deit-small'), ``--img-size`` (224), ``--patch-size`` (16),
    ``--num-classes`` (1000)."""
    parser.add_argument(
        '--arch', default='deit-small', help="mmdeit's arch name or a JSON arch dict"
    )
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--patch-size', type=int, default=16)
    parser.add_argument('--num-classes', type=int, default=1000)


def add_malloc_arg(parser: ArgumentParser) -> None:
    """``--malloc keep|glibc`` (default keep), applied by :func:`apply_malloc`."""
    parser.add_argument(
        '--malloc',
        default='keep',
        choices=['keep', 'glibc'],
        help="keep: glibc's malloc keeps freed memory (mmdeit.engine.keep_freed_memory, as "
        "mmdeit's tools do; every library of the process runs with it); glibc: its own "
        'thresholds. Set once for the process',
    )


def add_settle_arg(parser: ArgumentParser) -> None:
    """``--settle SECONDS`` (default 0.1): the pause before each timed call (or block of calls)
    of an interleaved measurement, read by the tool's timing loop."""
    parser.add_argument(
        '--settle',
        type=float,
        default=0.1,
        help='seconds of pause before each timed call, so that it starts on idle cores: '
        "ONNX Runtime's threads spin for tens of ms after a run and slow whatever runs next",
    )


def apply_malloc(args: Namespace) -> dict:
    """Keep freed memory for the process if ``args.malloc`` is 'keep'; returns what a report
    records: ``{'option': args.malloc, 'kept': the thresholds kept (bytes), or None}``."""
    from mmdeit.engine import freed_memory_setting, keep_freed_memory

    if args.malloc == 'keep':
        keep_freed_memory()
    return dict(option=args.malloc, kept=freed_memory_setting())


def require_positive(parser: ArgumentParser, args: Namespace, names: Tuple[str, ...]) -> None:
    """Exit through ``parser.error`` naming the first option of ``names`` (attribute names of
    ``args``) whose value is below 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')


def build_deit(lib: str, args: Namespace, **backbone_kwargs) -> DeiTModel:
    """mmdeit's or mmpretrain's backbone and head, randomly initialised.

    Args:
        lib: 'mmdeit' or 'mmpretrain'.
        args: ``arch`` (a name or a JSON dict), ``img_size``, ``patch_size``,
            ``drop_path_rate`` and ``num_classes``.
        **backbone_kwargs: More backbone arguments (``with_cp``, ``fast_path``).
    """
    models = __import__(f'{lib}.models', fromlist=['backbones', 'heads'])
    arch = json.loads(args.arch) if args.arch.strip().startswith('{') else args.arch
    backbone = models.backbones.DistilledVisionTransformer(
        arch=arch,
        img_size=args.img_size,
        patch_size=args.patch_size,
        drop_path_rate=args.drop_path_rate,
        **backbone_kwargs,
    )
    head = models.heads.DeiTClsHead(num_classes=args.num_classes, in_channels=backbone.embed_dims)
    backbone.init_weights()
    head.init_weights()
    return DeiTModel(backbone, head)


def build_models(args: Namespace, ablation: bool = True) -> Dict[str, nn.Module]:
    """Every library's model holding mmdeit's weights (strict loads), mmdeit first.

    With ``ablation``, also :data:`REFERENCE`: mmdeit's backbone built with ``fast_path=False``.
    """
    from timm.models.deit import VisionTransformerDistilled

    from mmdeit.converters import mmdeit_to_timm

    models = dict(mmdeit=build_deit('mmdeit', args), mmpretrain=build_deit('mmpretrain', args))
    state = models['mmdeit'].state_dict()
    s = models['mmdeit'].backbone.arch_settings
    peer = VisionTransformerDistilled(
        img_size=args.img_size,
        patch_size=args.patch_size,
        num_classes=args.num_classes,
        embed_dim=s['embed_dims'],
        depth=s['num_layers'],
        num_heads=s['num_heads'],
        mlp_ratio=s['feedforward_channels'] / s['embed_dims'],
        drop_path_rate=args.drop_path_rate,
    )
    peer.load_state_dict(mmdeit_to_timm(state), strict=True)
    models['timm'] = TimmModel(peer)
    if ablation:
        models[REFERENCE] = build_deit('mmdeit', args, fast_path=False)
    for name in set(models) - {'mmdeit', 'timm'}:
        models[name].load_state_dict(state, strict=True)
    return models


def gemm_shapes(model: nn.Module, batch: int) -> List[Tuple[int, int, int]]:
    """The ``(m, k, n)`` of the encoder's four linears at ``batch``: qkv, proj, fc1, fc2.

    ``m`` is the tokens of the batch (patches plus the cls/dist tokens); a layer's forward runs
    each once (its backward each twice, at other shapes of the same FLOPs).
    """
    backbone = model.backbone
    s = backbone.arch_settings
    h, w = backbone.patch_resolution
    m, c, f = (
        batch * (h * w + backbone.num_extra_tokens),
        s['embed_dims'],
        s['feedforward_channels'],
    )
    return [(m, c, 3 * c), (m, c, c), (m, c, f), (m, f, c)]


def flop_formulas() -> dict:
    """FLOPs of the ops torch's table lacks (CPU SDPA, addmm_, oneDNN linear), by its formulas.

    Each gets the shapes of the op's arguments (``FlopCounterMode``'s ``custom_mapping``).
    """
    aten, fc = torch.ops.aten, flop_counter

    def addmm_(self_shape, a_shape, b_shape, *args, **kwargs) -> int:
        return fc.mm_flop(a_shape, b_shape)

    def linear_pointwise(x_shape, *args, out_shape=None, **kwargs) -> int:
        rows, k = math.prod(x_shape[:-1]), x_shape[-1]
        return fc.mm_flop((rows, k), (k, out_shape[-1]))

    def sdpa(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    def sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    formulas = {
        aten.addmm_: addmm_,
        aten._scaled_dot_product_flash_attention_for_cpu: sdpa,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_backward,
    }
    if hasattr(torch.ops.mkldnn, '_linear_pointwise'):
        formulas[torch.ops.mkldnn._linear_pointwise] = linear_pointwise
    return formulas


def count_flops(fn: Fn) -> dict:
    """Call ``fn`` once under ``FlopCounterMode``; its FLOPs in total and per op.

    mmdeit's C++ kernels (``cpu_kernels.py``: the tile unit's attention and linears among them)
    are calls the counter cannot see; they are off for this call, so that the ATen and oneDNN
    ops they replace, the same products, are counted.
    """
    mode = flop_counter.FlopCounterMode(display=False, custom_mapping=flop_formulas())
    with switched_off('cpu-kernels'), mode:
        fn()
    by_op = {str(op): n for op, n in mode.get_flop_counts().get('Global', {}).items()}
    return dict(total=mode.get_total_flops(), by_op=by_op)


def autocast(args):
    """bf16 autocast for ``--dtype bf16``, else nothing."""
    if args.dtype == 'bf16':
        return torch.autocast(args.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_dtype(args) -> torch.dtype:
    """The dtype of the models' weights and inputs: bf16 for ``--dtype bf16-model`` (a model
    cast to bf16, no autocast), else fp32 (``bf16`` is fp32 weights under autocast)."""
    return torch.bfloat16 if args.dtype == 'bf16-model' else torch.float32


def compute_dtype(args) -> torch.dtype:
    """The dtype the GEMMs run in (that of the matmul peak): bf16 for both bf16 modes."""
    return torch.float32 if args.dtype == 'fp32' else torch.bfloat16


#: ``--sdpa``: the attention kernels allowed (None: torch's choice among all).
SDPA_BACKENDS = {
    'auto': None,
    'flash': 'FLASH_ATTENTION',
    'efficient': 'EFFICIENT_ATTENTION',
    'cudnn': 'CUDNN_ATTENTION',
    'math': 'MATH',
}


def sdpa_context(name: str):
    """Restrict ``scaled_dot_product_attention`` to one kernel (``--sdpa``); 'auto': no limit."""
    backend = SDPA_BACKENDS[name]
    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, backend))


def batch_data(args, batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels, the same for every library."""
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(batch, 3, args.img_size, args.img_size, generator=gen)
    y = torch.randint(0, args.num_classes, (batch,), generator=gen)
    return x.to(args.device, model_dtype(args)), y.to(args.device)


def loss_step(args, model: nn.Module, loss_fn: Callable[[], torch.Tensor], batch: int) -> Fn:
    """Forward and loss (``loss_fn``), backward, a step of DeiT's AdamW (fused)."""
    lr = 5e-4 * batch / 512
    opt = torch.optim.AdamW(model.train().parameters(), lr=lr, weight_decay=0.05, fused=True)

    def step() -> None:
        with autocast(args):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def train_step(args, model: nn.Module, batch: int) -> Fn:
    """The same training step for every library: mean cross-entropy of both heads."""
    x, y = batch_data(args, batch)

    def loss() -> torch.Tensor:
        return sum(F.cross_entropy(logits, y) for logits in model.logits(x)) / 2

    return loss_step(args, model, loss, batch)


def predict_fn(args, model: nn.Module) -> Fn:
    """``model.predict`` of a fixed random batch, without autograd."""
    x = batch_data(args, args.infer_batch)[0]
    model.eval()

    def infer() -> None:
        with torch.inference_mode(), autocast(args):
            model.predict(x)

    return infer


def timed(args, fn: Fn) -> Tuple[float, float]:
    """Wall-clock and process CPU seconds of one call, between device synchronisations."""
    sync = torch.cuda.synchronize if args.device == 'cuda' else lambda: None
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - start, time.process_time() - cpu
