from .distilled_image_classifier import DistilledImageClassifier, student_model_cfg
from .teacher_input import TeacherInput

__all__ = ['DistilledImageClassifier', 'TeacherInput', 'student_model_cfg']
