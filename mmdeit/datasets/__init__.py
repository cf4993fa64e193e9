from .cluttered_digits import ClutteredDigitsDataset
from .data_root_check import check_data_roots
from .digits import DigitsDataset
from .transforms import TrainPipeline

__all__ = ['check_data_roots', 'ClutteredDigitsDataset', 'DigitsDataset', 'TrainPipeline']
