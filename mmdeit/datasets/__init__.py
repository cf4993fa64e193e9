from .data_root_check import check_data_roots
from .digits import DigitsDataset

__all__ = ['check_data_roots', 'DigitsDataset']
