from .deit_accuracy import DeiTAccuracy
from .per_head_accuracy import PerHeadAccuracy

__all__ = ['DeiTAccuracy', 'PerHeadAccuracy']
