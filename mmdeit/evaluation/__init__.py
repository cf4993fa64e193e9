from .evaluator_check import check_evaluators
from .metrics import DeiTAccuracy, PerHeadAccuracy

__all__ = ['DeiTAccuracy', 'PerHeadAccuracy', 'check_evaluators']
