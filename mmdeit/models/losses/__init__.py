from .distillation_loss import DistillationLoss

__all__ = ['DistillationLoss']
