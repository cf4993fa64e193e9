"""Deployment: the student as deployed, exported to ONNX (``python -m mmdeit export``)."""

from .deployed_classifier import DeployedClassifier
from .onnx_export import DEFAULT_OPSET, HEADS, INSTALL_HINT, METADATA_KEYS, export_onnx

__all__ = [
    'DEFAULT_OPSET',
    'HEADS',
    'INSTALL_HINT',
    'METADATA_KEYS',
    'DeployedClassifier',
    'export_onnx',
]
