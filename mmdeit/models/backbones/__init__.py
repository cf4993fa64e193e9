from .distilled_vision_transformer import DistilledVisionTransformer
from .vision_transformer import VisionTransformer

__all__ = ['DistilledVisionTransformer', 'VisionTransformer']
