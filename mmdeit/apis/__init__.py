from .inference import inference_model, init_model, test_pipeline_cfg

__all__ = ['inference_model', 'init_model', 'test_pipeline_cfg']
