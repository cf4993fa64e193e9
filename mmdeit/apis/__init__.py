from .config_file import checkpoint_path, config_path, load_config
from .inference import inference_model, init_model, test_pipeline_cfg
from .model_zoo import get_model, list_models, register_model_zoo

__all__ = [
    'checkpoint_path',
    'config_path',
    'get_model',
    'inference_model',
    'init_model',
    'list_models',
    'load_config',
    'register_model_zoo',
    'test_pipeline_cfg',
]
