from .checkpoint_convert import (
    FORMATS,
    TARGETS,
    convert_checkpoint,
    detect_format,
    infer_arch,
    mmdeit_to_timm,
    resize_checkpoint_pos_embed,
    suggest_model_cfg,
    timm_to_mmdeit,
    to_mmdeit,
)
from .hf_checkpoint_convert import HF_LAYOUTS, hf_to_mmdeit, mmdeit_to_hf
from .pos_embed import resize_pos_embed

__all__ = [
    'FORMATS',
    'HF_LAYOUTS',
    'TARGETS',
    'convert_checkpoint',
    'detect_format',
    'hf_to_mmdeit',
    'infer_arch',
    'mmdeit_to_hf',
    'mmdeit_to_timm',
    'resize_checkpoint_pos_embed',
    'resize_pos_embed',
    'suggest_model_cfg',
    'timm_to_mmdeit',
    'to_mmdeit',
]
