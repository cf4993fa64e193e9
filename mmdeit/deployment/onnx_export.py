"""``export_onnx``: a config and a checkpoint to an ONNX model of the student as deployed.

What is exported (see ``docs/deployment.md``):

- the student alone (a distilled config loses its teacher, as in :func:`~mmdeit.apis.init_model`),
  with the reference layers (``fast_path=False``: the fast path's oneDNN calls have no ONNX
  form, and in fp32 it computes the same function); as in PyTorch, the last layer computes only
  the cls/dist tokens the head reads;
- the head as it predicts: for DeiT's two heads the average of the class-token and the
  distillation-token heads ('fused', the default of the shipped configs), or one of them;
- input ``input``: (batch, 3, H, W) float32, the data preprocessor's output (mean/std
  normalised, in its channel order), H x W the backbone's ``img_size``; the batch axis is
  dynamic;
- output ``output``: (batch, num_classes) float32, softmax probabilities (as mmdeploy exports
  classifiers, and as ``inference_model`` reports ``pred_scores``) or, with
  ``softmax=False``, the logits;
- metadata (``InferenceSession.get_modelmeta().custom_metadata_map``): :data:`METADATA_KEYS`.

The exporter is ``torch.onnx``'s TorchScript one (``dynamo=False``), which needs only onnx (its
``torch.export``-based one also needs onnxscript; see ``docs/deployment.md``). onnx and
onnxruntime come with ``pip install mmdeit[deploy]``.
"""

import copy
import inspect
import io
import json
import os.path as osp
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope

from mmdeit.apis.config_file import checkpoint_path, load_config
from mmdeit.apis.inference import init_model, test_pipeline_cfg
from mmdeit.engine import atomic_write
from mmdeit.registry import MODELS

from .deployed_classifier import DeployedClassifier

#: ``head`` choices and the ``DeiTClsHead.inference_mode`` each one exports.
HEADS = {'fused': 'fusion', 'cls': 'cls', 'dist': 'dist'}
#: ONNX opset of the export: 17 has LayerNormalization as one op (ONNX Runtime >= 1.11).
DEFAULT_OPSET = 17
#: Opsets accepted (the TorchScript exporter's range, from 14: scaled dot-product attention).
OPSETS = range(14, 21)
INPUT_NAME, OUTPUT_NAME = 'input', 'output'
#: The metadata written into the model, each value a string (JSON for lists).
METADATA_KEYS = (
    'head',  # 'fused', 'cls', 'dist', or 'single' (a head with one classifier)
    'output',  # 'softmax' or 'logits'
    'input_size',  # [H, W]
    'channel_order',  # 'RGB' or 'BGR': the input's, after the preprocessor
    'mean',  # per channel of the input, 0-255 scale
    'std',
    'classes',  # the class names, [] when unknown
    'test_pipeline',  # the config's test pipeline (resize, crop), from a file
    'config',  # the config file it was exported from
)
INSTALL_HINT = 'pip install mmdeit[deploy]'


def _require(module: str, why: str):
    try:
        return __import__(module)
    except ImportError as err:
        raise ImportError(
            f'{why} needs the {module} package, which is not installed ({err}); '
            f'install the deployment extra: {INSTALL_HINT}'
        ) from None


def _check_args(output: Union[str, Path], head: Optional[str], opset: int):
    if not str(output).endswith('.onnx'):
        raise ValueError(f'output must be a path ending in .onnx, got {str(output)!r}')
    if head is not None and head not in HEADS:
        raise ValueError(f'head must be one of {tuple(HEADS)} or None, got {head!r}')
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in OPSETS:
        raise ValueError(f'opset must be an int in [{OPSETS[0]}, {OPSETS[-1]}], got {opset!r}')


def _registered(cfg: Config, part: dict) -> Optional[type]:
    """The class a model part's config builds, looked up in the config's scope."""
    part_type = part.get('type')
    if not isinstance(part_type, str):
        return part_type if isinstance(part_type, type) else None
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmdeit')):
        return MODELS.get(part_type)


def _accepts(cls: Optional[type], argument: str) -> bool:
    """Whether ``cls(...)`` takes ``argument``, also through a subclass's ``**kwargs``."""
    return cls is not None and any(
        argument in inspect.signature(klass.__init__).parameters
        for klass in cls.__mro__
        if '__init__' in vars(klass)
    )


def _overrides(cfg: Config, head: Optional[str]) -> dict:
    """``init_model`` overrides: the plain path and the chosen head, checked against the config."""
    overrides = {}
    backbone_cls = _registered(cfg, cfg.model.get('backbone') or {})
    if _accepts(backbone_cls, 'fast_path'):
        overrides['model.backbone.fast_path'] = False
    head_cfg = cfg.model.get('head') or {}
    head_cls = _registered(cfg, head_cfg)
    two_heads = _accepts(head_cls, 'inference_mode')
    if head is None:
        return overrides
    if not two_heads:
        if head != 'cls':
            raise ValueError(
                f"head {head!r} needs the two heads of DeiTClsHead; the config's head "
                f"{head_cfg.get('type')!r} has one classifier: use head='cls' or none"
            )
        return overrides
    teacher_classes = head_cfg.get('teacher_num_classes')
    if head != 'cls' and teacher_classes not in (None, head_cfg.get('num_classes')):
        raise ValueError(
            f"head {head!r} uses head_dist, which predicts the teacher's "
            f'teacher_num_classes={teacher_classes} classes, not the '
            f"num_classes={head_cfg.get('num_classes')} of the student: use head='cls'"
        )
    overrides['model.head.inference_mode'] = HEADS[head]
    return overrides


def _input_size(model: nn.Module) -> Tuple[int, int]:
    size = getattr(getattr(model, 'backbone', None), 'img_size', None)
    if size is None:
        raise ValueError(
            f'cannot tell the input size: {type(model.backbone).__name__} has no img_size'
        )
    return (size, size) if isinstance(size, int) else tuple(size)


def _metadata(model: nn.Module, cfg: Config, head: str, softmax: bool) -> dict:
    pre = model.data_preprocessor
    normalise = getattr(pre, '_enable_normalize', False)
    mean = pre.mean.flatten().tolist() if normalise else [0.0, 0.0, 0.0]  # (C, 1, 1) buffers
    std = pre.std.flatten().tolist() if normalise else [1.0, 1.0, 1.0]
    try:
        pipeline = test_pipeline_cfg(cfg, from_file=True)
    except ValueError:  # a config without a test pipeline
        pipeline = []
    return {
        'head': head,
        'output': 'softmax' if softmax else 'logits',
        'input_size': json.dumps(list(_input_size(model))),
        'channel_order': 'RGB' if getattr(pre, 'to_rgb', False) else 'BGR',
        'mean': json.dumps(mean),
        'std': json.dumps(std),
        'classes': json.dumps(list(model.dataset_meta.get('classes') or [])),
        'test_pipeline': json.dumps(pipeline, default=str),
        'config': osp.basename(cfg.filename or ''),
    }


def _torchscript_export(wrapper: nn.Module, dummy: torch.Tensor, opset: int) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The tracer's notes on shapes read as Python numbers: the image size is fixed by the
        # export (the batch axis stays dynamic); and the exporter's deprecation notice.
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (dummy,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: 'batch'}, OUTPUT_NAME: {0: 'batch'}},
        )
    return buffer.getvalue()


def export_onnx(
    config: Union[str, Path, Config],
    checkpoint: Union[str, Path],
    output: Union[str, Path],
    head: Optional[str] = None,
    softmax: bool = True,
    opset: int = DEFAULT_OPSET,
) -> str:
    """Export the classifier of ``config`` with the weights of ``checkpoint`` to ONNX.

    Args:
        config: Config file path, ``PACKAGE::path`` or :class:`~mmengine.config.Config`.
        checkpoint: Checkpoint path (loaded strictly, as :func:`~mmdeit.apis.init_model`).
        output: The ``.onnx`` file to write (atomically; its folder is created).
        head: Which prediction of DeiT's two heads: 'fused' (their average), 'cls' or
            'dist'; None exports the config's ``inference_mode`` ('fused' in the shipped
            configs), or the one head of a model without a distillation token. Defaults to
            None.
        softmax: Output probabilities; False outputs the logits. Defaults to True.
        opset: ONNX opset, 14-20. Defaults to :data:`DEFAULT_OPSET`.

    Returns:
        The path written.

    Raises:
        ValueError: A bad ``output``, ``head`` or ``opset``, a head the model lacks, a
            ``config`` that is not a config file or a ``checkpoint`` that is one.
        FileNotFoundError: ``config`` or ``checkpoint`` does not exist.
        ImportError: onnx is not installed.
    """
    _check_args(output, head, opset)
    checkpoint = checkpoint_path(checkpoint)
    config = load_config(config)
    onnx = _require('onnx', 'ONNX export')
    cfg = copy.deepcopy(config)
    model = init_model(cfg, str(checkpoint), device='cpu', **_overrides(cfg, head))
    if getattr(model.backbone, 'fast_path', False):
        raise RuntimeError(
            'the backbone was built with fast_path=True; export needs the plain path'
        )
    exported_head = head or {v: k for k, v in HEADS.items()}.get(
        getattr(model.head, 'inference_mode', None), 'single'
    )
    wrapper = DeployedClassifier(model, softmax=softmax).eval()
    channels = model.backbone.patch_embed.projection.in_channels
    dummy = torch.randn(
        1, channels, *_input_size(model), generator=torch.Generator().manual_seed(0)
    )
    metadata = onnx.ModelProto()
    for key, value in _metadata(model, cfg, exported_head, softmax).items():
        metadata.metadata_props.add(key=key, value=value)
    with torch.no_grad():
        exported = _torchscript_export(wrapper, dummy, opset)
    # Serialised protobuf messages merge by concatenation (repeated fields append): the
    # metadata is added without parsing and serialising the weights again.
    data = exported + metadata.SerializeToString()
    onnx.checker.check_model(data)
    atomic_write(data, output)
    MMLogger.get_current_instance().info(
        f'exported {exported_head} head to {output}: {INPUT_NAME} (batch, {channels}, '
        f'{", ".join(map(str, _input_size(model)))}) -> {OUTPUT_NAME} (batch, num_classes) '
        f'{"softmax" if softmax else "logits"}, opset {opset}'
    )
    return str(output)
