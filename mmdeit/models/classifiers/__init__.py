from .distilled_image_classifier import DistilledImageClassifier

__all__ = ['DistilledImageClassifier']
