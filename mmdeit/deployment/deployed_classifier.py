"""``DeployedClassifier``: what an ONNX export of an mmdeit classifier computes.

The graph of :func:`~mmdeit.deployment.export_onnx` is this module's ``forward``: the
classifier's ``forward(inputs, mode='tensor')`` (backbone, neck, head: the logits of the head
as it predicts) followed, by default, by a softmax over the classes, as OpenMMLab's own
deployment (mmdeploy) exports classifiers. The data preprocessor (mean/std, BGR to RGB) is not
part of it: the input is the batch the preprocessor gives, as in mmdeploy.
"""

import torch
import torch.nn as nn


class DeployedClassifier(nn.Module):
    """A classifier's prediction as one tensor: normalised images in, class scores out.

    Args:
        model: An mmpretrain/mmdeit classifier (``forward(inputs, mode='tensor')`` returns the
            head's logits), e.g. from :func:`mmdeit.apis.init_model`.
        softmax: Output the softmax of the logits (the probabilities that
            :func:`mmdeit.apis.inference_model` reports as ``pred_scores``); False outputs the
            logits themselves. Defaults to True.
    """

    def __init__(self, model: nn.Module, softmax: bool = True):
        super().__init__()
        self.model = model
        self.softmax = softmax

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), normalised as the data preprocessor does -> (B, num_classes)."""
        logits = self.model(inputs, mode='tensor')  # (B, num_classes)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(
                f'{type(self.model).__name__} has no head giving one tensor of logits '
                f"(forward(mode='tensor') returned a {type(logits).__name__}); only classifiers "
                'with a head can be deployed'
            )
        return logits.softmax(dim=-1) if self.softmax else logits
