"""Tiny timm / HF / mmdeit models for the converter tests (random weights, no downloads)."""

import torch
import transformers
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer as TimmViT

from mmdeit.registry import MODELS

TINY = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
NUM_CLASSES = 5
HF_LAYOUT = 'v5' if int(transformers.__version__.split('.')[0]) >= 5 else 'legacy'
HF_TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    num_labels=NUM_CLASSES,
    layer_norm_eps=1e-6,
)


def noisy(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb every parameter so that zero/one inits (biases, norms, tokens) carry signal."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def timm_tiny(distilled: bool = True) -> torch.nn.Module:
    """A 2-layer, 32-wide timm DeiT on 32x32 inputs with 8x8 patches."""
    cls = VisionTransformerDistilled if distilled else TimmViT
    return noisy(
        cls(
            img_size=32,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
            mlp_ratio=2,
            num_classes=NUM_CLASSES,
        )
    )


def mm_classifier(
    distilled: bool = True,
    arch=TINY,
    img_size: int = 32,
    patch_size: int = 8,
    num_classes: int = NUM_CLASSES,
    **head_kwargs,
) -> torch.nn.Module:
    """The mmdeit (distilled) or mmpretrain (cls-only) classifier matching :func:`timm_tiny`."""
    backbone = 'mmdeit.DistilledVisionTransformer' if distilled else 'mmpretrain.VisionTransformer'
    head = 'mmdeit.DeiTClsHead' if distilled else 'mmpretrain.VisionTransformerClsHead'
    in_channels = arch['embed_dims'] if isinstance(arch, dict) else 192
    return MODELS.build(
        dict(
            type='mmpretrain.ImageClassifier',
            backbone=dict(type=backbone, arch=arch, img_size=img_size, patch_size=patch_size),
            head=dict(type=head, num_classes=num_classes, in_channels=in_channels, **head_kwargs),
        )
    ).eval()


def load_and_compare(model, state_dict, reference, x, atol=1e-5):
    """Load ``state_dict`` strictly into ``model`` and check its logits on ``x``."""
    model.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        got = model(x, mode='tensor')
    torch.testing.assert_close(got, reference, rtol=0, atol=atol)
    return got
