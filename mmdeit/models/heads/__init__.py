from .deit_cls_head import DeiTClsHead

__all__ = ['DeiTClsHead']
