from .fast_route import dct_scale
from .train_pipeline import TrainPipeline

__all__ = ['TrainPipeline', 'dct_scale']
