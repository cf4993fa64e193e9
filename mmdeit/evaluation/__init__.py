from .metrics import PerHeadAccuracy

__all__ = ['PerHeadAccuracy']
