from .distilled_image_classifier import DistilledImageClassifier, student_model_cfg

__all__ = ['DistilledImageClassifier', 'student_model_cfg']
