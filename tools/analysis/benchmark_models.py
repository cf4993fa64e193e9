"""The models that ``benchmark.py`` compares, built with identical weights, and their FLOPs.

Three implementations of the same distilled DeiT (backbone + two linear heads): mmdeit's, mmpretrain
1.2's ``DistilledVisionTransformer`` + ``DeiTClsHead`` and timm's ``VisionTransformerDistilled``
(``deit_*_distilled_patch16_224`` for the named archs, ``pretrained=False``). mmdeit's weights are
copied into the other two, so all three do exactly the same arithmetic. Every model here exposes
``logits(x) -> (cls_logits, dist_logits)`` for training and ``predict(x)`` (the fused logits) for
inference.
"""

import json
from typing import Callable, Dict, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

Arch = Union[str, dict]

#: timm's names of the distilled DeiTs (patch 16, 224x224).
TIMM_NAMES = {
    'deit-tiny': 'deit_tiny_distilled_patch16_224',
    'deit-small': 'deit_small_distilled_patch16_224',
    'deit-base': 'deit_base_distilled_patch16_224',
}
ALIASES = {'deit-t': 'deit-tiny', 'deit-s': 'deit-small', 'deit-b': 'deit-base'}
LIBRARIES = ('mmdeit', 'mmpretrain', 'timm')


def parse_arch(arch: str) -> Arch:
    """An arch name ('deit-small') or a JSON dict string (mmdeit's arch dict keys)."""
    text = arch.strip()
    if text.startswith('{'):
        parsed = json.loads(text)
        if not isinstance(parsed, dict):
            raise ValueError(f'arch JSON must be an object, got {arch!r}')
        return parsed
    name = ALIASES.get(text.lower(), text.lower())
    if name not in TIMM_NAMES:
        raise ValueError(f'arch must be one of {sorted(TIMM_NAMES)} or a JSON dict, got {arch!r}')
    return name


def arch_label(arch: Arch) -> str:
    return arch if isinstance(arch, str) else json.dumps(arch, sort_keys=True)


class DeiTModel(nn.Module):
    """A backbone and a DeiT head; the state_dict is the mmdeit/mmpretrain classifier layout.

    Args:
        backbone: A distilled ViT whose last output is the pair (cls, dist), each (B, C).
        head: A head with ``layers.head`` and ``layers.head_dist`` and a fused ``forward``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def logits(self, x: torch.Tensor):
        cls_token, dist_token = self.backbone(x)[-1]  # (B, C), (B, C)
        return self.head.layers.head(cls_token), self.head.layers.head_dist(dist_token)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, num_classes), 'fusion' of both heads


class TimmModel(nn.Module):
    """timm's distilled DeiT behind the same ``logits``/``predict`` interface."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.model.set_distilled_training(True)

    def logits(self, x: torch.Tensor):
        return self.model(x)  # (cls, dist) in train mode with distilled training

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (cls + dist) / 2 in eval mode


def build_mmdeit(arch: Arch, cfg: dict, with_cp: bool = False) -> DeiTModel:
    """mmdeit's backbone and head, randomly initialised as in training from scratch."""
    from mmdeit.models.backbones import DistilledVisionTransformer
    from mmdeit.models.heads import DeiTClsHead

    backbone = DistilledVisionTransformer(
        arch=arch,
        img_size=cfg['img_size'],
        patch_size=cfg['patch_size'],
        drop_path_rate=cfg['drop_path_rate'],
        with_cp=with_cp,
    )
    head = DeiTClsHead(num_classes=cfg['num_classes'], in_channels=backbone.embed_dims)
    backbone.init_weights()
    head.init_weights()
    return DeiTModel(backbone, head)


def build_mmpretrain(arch: Arch, cfg: dict) -> DeiTModel:
    from mmpretrain.models.backbones import DistilledVisionTransformer
    from mmpretrain.models.heads import DeiTClsHead

    backbone = DistilledVisionTransformer(
        arch=arch,
        img_size=cfg['img_size'],
        patch_size=cfg['patch_size'],
        drop_path_rate=cfg['drop_path_rate'],
    )
    head = DeiTClsHead(num_classes=cfg['num_classes'], in_channels=backbone.embed_dims)
    return DeiTModel(backbone, head)


def build_timm(arch: Arch, cfg: dict, settings: dict) -> TimmModel:
    """timm's model: ``create_model(<deit name>)`` for a named arch, else the class itself."""
    import timm
    from timm.models.deit import VisionTransformerDistilled

    kwargs = dict(
        num_classes=cfg['num_classes'],
        img_size=cfg['img_size'],
        drop_path_rate=cfg['drop_path_rate'],
    )
    if isinstance(arch, str) and cfg['patch_size'] == 16:
        model = timm.create_model(TIMM_NAMES[arch], pretrained=False, **kwargs)
    else:
        embed = settings['embed_dims']
        model = VisionTransformerDistilled(
            patch_size=cfg['patch_size'],
            embed_dim=embed,
            depth=settings['num_layers'],
            num_heads=settings['num_heads'],
            mlp_ratio=settings['feedforward_channels'] / embed,
            qkv_bias=True,
            **kwargs,
        )
    return TimmModel(model)


def build_all(arch: Arch, cfg: dict) -> Dict[str, nn.Module]:
    """The three implementations holding mmdeit's (random) weights, loaded strictly."""
    from mmdeit.models.utils.checkpoint_convert import mmdeit_to_timm

    ours = build_mmdeit(arch, cfg)
    state = ours.state_dict()
    theirs = build_mmpretrain(arch, cfg)
    theirs.load_state_dict(state, strict=True)
    peer = build_timm(arch, cfg, ours.backbone.arch_settings)
    peer.model.load_state_dict(mmdeit_to_timm(state), strict=True)
    return dict(mmdeit=ours, mmpretrain=theirs, timm=peer)


def deit_flops(
    settings: dict, img_size: int, patch_size: int, num_classes: int, drop_path_rate: float = 0.0
) -> dict:
    """Matmul FLOPs per image, a multiply and an add counted as 2 FLOPs (2 per MAC).

    Counted: the patch-embedding convolution, the qkv/proj/fc1/fc2 GEMMs, the two attention
    matmuls (QK^T and AV) and both heads. Not counted: layer norm, GELU, softmax, bias and
    residual adds (elementwise, well under 1% of the total). A training step is the forward
    plus twice the forward for the backward (input and weight gradients), except that the
    patch embedding needs no input gradient: ``3 * forward - patch_embed``.

    ``forward`` and ``train_step`` are the work every implementation is asked to do. mmdeit
    leaves out work whose result is unused (see ``transformer_layer.py``), so it executes
    less: ``mmdeit_forward`` (its last layer computes the 2 extra tokens' outputs only) and
    ``mmdeit_train_step`` (that, plus the expected saving of not computing the residual
    branches that stochastic depth drops, at ``drop_path_rate``).
    """
    c, depth = settings['embed_dims'], settings['num_layers']
    ffn = settings['feedforward_channels']
    patches = (img_size // patch_size) ** 2
    tokens = patches + 2  # cls + dist
    patch_embed = 2 * patches * c * 3 * patch_size**2
    attn_branch = 2 * tokens * 4 * c * c + 2 * 2 * tokens * tokens * c  # per layer
    ffn_branch = 2 * tokens * 2 * c * ffn
    linear = 2 * tokens * (3 * c * c + c * c + 2 * c * ffn) * depth
    attention = 2 * 2 * tokens * tokens * c * depth
    heads = 2 * 2 * c * num_classes
    forward = patch_embed + linear + attention + heads
    skipped_rows = tokens - 2  # last layer: the patch tokens' queries, proj and FFN
    last_layer_saving = 2 * skipped_rows * (2 * c * c + 2 * c * ffn + 2 * tokens * c)
    rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linspace
    drop_saving = sum(r * (attn_branch + ffn_branch) for r in rates[:-1])
    last_branches = attn_branch + ffn_branch - last_layer_saving
    drop_saving += rates[-1] * last_branches
    return dict(
        forward=forward,
        forward_attention=attention,
        forward_without_attention=forward - attention,
        train_step=3 * forward - patch_embed,
        mmdeit_forward=forward - last_layer_saving,
        mmdeit_train_step=3 * (forward - last_layer_saving - drop_saving) - patch_embed,
    )


def counted_forward_flops(model: nn.Module, x: torch.Tensor, autograd: bool = False) -> int:
    """FLOPs of ``model.predict(x)`` by torch's FlopCounterMode (CPU: SDPA is not counted).

    Args:
        autograd: Count with autograd on, where mmdeit runs the ordinary aten GEMMs (the
            counter does not know oneDNN's inference op). Defaults to False.
    """
    from torch.utils.flop_counter import FlopCounterMode

    def addmm_flop(acc_shape, a_shape, b_shape, *args, **kwargs) -> int:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]  # (m, k) @ (k, n)

    grad_mode = torch.enable_grad() if autograd else torch.inference_mode()
    in_place = {torch.ops.aten.addmm_: addmm_flop}  # not in torch's table; mmdeit uses it
    with grad_mode, FlopCounterMode(display=False, custom_mapping=in_place) as counter:
        model.predict(x)
    return int(counter.get_total_flops())


def pair_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same loss for every library: mean cross-entropy of both heads on hard labels."""
    cls_logits, dist_logits = model.logits(x)
    return (F.cross_entropy(cls_logits, y) + F.cross_entropy(dist_logits, y)) / 2


def make_train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x, y, autocast: Callable
) -> Callable[[], None]:
    """A closure doing one full training step: forward, loss, backward, AdamW step."""

    def step() -> None:
        with autocast():
            loss = pair_loss(model, x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def make_adamw(params, impl: str, batch: int) -> torch.optim.AdamW:
    """DeiT's AdamW (lr 5e-4 * batch / 512, weight decay 0.05); ``impl``: default/foreach/fused."""
    kwargs = {} if impl == 'default' else {impl: True}
    return torch.optim.AdamW(params, lr=5e-4 * batch / 512, weight_decay=0.05, **kwargs)


def model_cfg(args) -> dict:
    """The build settings shared by all models, from the benchmark's arguments."""
    return dict(
        img_size=args.img_size,
        patch_size=args.patch_size,
        num_classes=args.num_classes,
        drop_path_rate=args.drop_path_rate,
    )
