from .per_head_accuracy import PerHeadAccuracy

__all__ = ['PerHeadAccuracy']
