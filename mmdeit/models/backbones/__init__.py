from .distilled_vision_transformer import DistilledVisionTransformer
from .fast_transformer_layer import FastTransformerEncoderLayer
from .masked_vision_transformer import (
    MaskedDistilledVisionTransformer,
    MaskedVisionTransformer,
    MaskTokenMixin,
)
from .transformer_layer import TransformerEncoderLayer
from .vision_transformer import VisionTransformer

__all__ = [
    'DistilledVisionTransformer',
    'FastTransformerEncoderLayer',
    'MaskTokenMixin',
    'MaskedDistilledVisionTransformer',
    'MaskedVisionTransformer',
    'TransformerEncoderLayer',
    'VisionTransformer',
]
