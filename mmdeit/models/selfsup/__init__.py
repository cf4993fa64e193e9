from .simmim import DeiTSimMIM

__all__ = ['DeiTSimMIM']
