from .distilled_vision_transformer import DistilledVisionTransformer
from .fast_transformer_layer import FastTransformerEncoderLayer
from .transformer_layer import TransformerEncoderLayer
from .vision_transformer import VisionTransformer

__all__ = [
    'DistilledVisionTransformer',
    'FastTransformerEncoderLayer',
    'TransformerEncoderLayer',
    'VisionTransformer',
]
