from .train_pipeline import TrainPipeline, dct_scale

__all__ = ['TrainPipeline', 'dct_scale']
