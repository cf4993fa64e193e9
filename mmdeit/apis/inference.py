"""``init_model`` / ``inference_model``: a trained checkpoint to predictions in two calls."""

import copy
import inspect
import logging
import os.path as osp
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope

from mmdeit.engine import safe_load_checkpoint
from mmdeit.models.classifiers import student_model_cfg
from mmdeit.registry import DATASETS, MODELS

from .config_file import checkpoint_path, load_config

ImageType = Union[str, Path, np.ndarray]


def _student_cfg(cfg: Config) -> dict:
    """The model config for inference: a distilled classifier loses its teacher."""
    model_cfg = copy.deepcopy(cfg.model)
    # As the Runner does: the top-level data_preprocessor (mean/std, to_rgb) is the model's.
    if model_cfg.get('data_preprocessor') is None and cfg.get('data_preprocessor'):
        model_cfg['data_preprocessor'] = copy.deepcopy(cfg.data_preprocessor)
    model_cfg = student_model_cfg(model_cfg)
    model_cfg.pop('pretrained', None)
    model_cfg.pop('train_cfg', None)  # batch augments are for training only
    return model_cfg


def _classes_from_cfg(cfg: Config) -> Optional[tuple]:
    for loader in ('test_dataloader', 'val_dataloader', 'train_dataloader'):
        dataset = (cfg.get(loader) or {}).get('dataset')
        if not dataset:
            continue
        classes = (dataset.get('metainfo') or {}).get('classes')
        if classes:
            return tuple(classes)
        dataset_type = dataset.get('type')
        dataset_cls = DATASETS.get(dataset_type) if isinstance(dataset_type, str) else None
        classes = getattr(dataset_cls, 'METAINFO', {}).get('classes')
        if classes:
            return tuple(classes)
    return None


def init_model(
    config: Union[str, Path, Config],
    checkpoint: Optional[str] = None,
    device: Union[str, torch.device] = 'cpu',
    compile: Union[bool, dict] = False,
    **overrides,
) -> nn.Module:
    """Build a classifier from a config for inference, optionally loading a checkpoint.

    A ``DistilledImageClassifier`` is built without its teacher (prediction uses the student
    only). The checkpoint is loaded strictly; missing or unexpected keys are an error that
    names them.

    Args:
        config: Config file path, ``PACKAGE::path`` (``mmdeit::deit/...``, as a ``_base_``)
            or :class:`Config`.
        checkpoint: Checkpoint path; None keeps the initialisation. Defaults to None.
        device: Device to put the model on. Defaults to 'cpu'.
        compile: Compile the backbone with ``torch.compile`` for inference, in place (the
            state-dict keys and the model's methods, ``test_step`` included, stay): True for
            ``torch.compile``'s defaults, or a dict of its arguments, e.g.
            ``dict(mode='max-autotune')``. The first forward at each input shape compiles.
            Defaults to False.
        **overrides: Config entries to override, as ``--cfg-options`` keys, e.g.
            ``**{'model.head.inference_mode': 'cls'}``.

    Returns:
        The model in eval mode, with ``model.cfg`` (the config) and ``model.dataset_meta``
        (``{'classes': ...}`` when the class names are known, from the checkpoint's meta or
        the config's dataset).
    """
    config = load_config(config)
    compile_kwargs = _compile_kwargs(compile)
    cfg = copy.deepcopy(config)
    if overrides:
        cfg.merge_from_dict(overrides)
    init_default_scope(cfg.get('default_scope', 'mmdeit'))
    model = MODELS.build(_student_cfg(cfg))
    classes = _classes_from_cfg(cfg)
    if checkpoint is not None:
        ckpt = safe_load_checkpoint(
            model, checkpoint_path(checkpoint), map_location='cpu', strict=True
        )
        meta_classes = ckpt.get('meta', {}).get('dataset_meta', {}).get('classes')
        classes = tuple(meta_classes) if meta_classes else classes
    else:
        logger = MMLogger.get_current_instance()
        level = logger.level
        # Without a log file mmengine's init_weights prints a line per parameter (dozens of
        # lines before the result): kept for INFO's next user, not shown here.
        logger.setLevel(max(level, logging.WARNING))
        try:
            model.init_weights()
        finally:
            logger.setLevel(level)
        logger.warning('init_model: no checkpoint, random weights')
    model.cfg = cfg
    model.dataset_meta = {'classes': classes} if classes else {}
    model = model.to(device).eval()
    if compile_kwargs is not None:
        model.backbone.compile(**compile_kwargs)
    return model


def _compile_kwargs(compile: Union[bool, dict]) -> Optional[dict]:
    """``torch.compile``'s arguments for ``init_model(compile=...)``; None: no compiling."""
    if isinstance(compile, bool):
        return {} if compile else None
    if not isinstance(compile, dict):
        raise TypeError(
            f'compile must be True, False or a dict of torch.compile arguments, got '
            f'{type(compile).__name__} {compile!r}'
        )
    allowed = [p for p in inspect.signature(torch.compile).parameters if p != 'model']
    unknown = sorted(set(compile) - set(allowed))
    if unknown:
        raise ValueError(
            f'compile has keys {unknown} that torch.compile does not take; it takes {allowed}'
        )
    return dict(compile)


def _check_array(img: np.ndarray, in_channels: int) -> None:
    if img.ndim != 3 or img.shape[2] != in_channels:
        raise ValueError(
            f'img must be an (H, W, {in_channels}) array in BGR order (as mmcv.imread gives), '
            f'got shape {img.shape}; convert grey or RGBA images first, e.g. with '
            f'mmcv.gray2bgr or img[..., :3]'
        )
    if img.dtype != np.uint8:
        raise ValueError(f'img must be uint8, got {img.dtype}')


def check_image_file(path: Union[str, Path]) -> None:
    """Raise ``FileNotFoundError`` naming ``path`` unless it is a file (an image to read)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'image {path} does not exist')


def test_pipeline_cfg(cfg: Config, from_file: bool = True) -> List[dict]:
    """The config's test pipeline, starting with ``LoadImageFromFile`` exactly when images
    come from files.

    Configs whose datasets hold images in memory (the digits ones) have no loading step; an
    image path then still needs one, an array never does.

    Args:
        cfg: The full config (``test_pipeline`` or ``test_dataloader.dataset.pipeline``).
        from_file: Whether the inputs are image paths. Defaults to True.
    """
    pipeline = cfg.get('test_pipeline') or (cfg.get('test_dataloader') or {}).get(
        'dataset', {}
    ).get('pipeline')
    if not pipeline:
        raise ValueError(
            'the config has neither test_pipeline nor test_dataloader.dataset.pipeline'
        )
    pipeline = [t for t in copy.deepcopy(list(pipeline)) if t['type'] != 'LoadImageFromFile']
    return [dict(type='LoadImageFromFile')] + pipeline if from_file else pipeline


def inference_model(
    model: nn.Module, img: Union[ImageType, Sequence[ImageType]]
) -> Union[dict, List[dict]]:
    """Classify one image or a list of images with the config's test pipeline.

    Args:
        model: A model from :func:`init_model`.
        img: An image path, a BGR uint8 (H, W, 3) array, or a list of them.

    Returns:
        For each image a dict with ``pred_label`` (int), ``pred_score`` (float),
        ``pred_scores`` (np.ndarray of all class probabilities) and ``pred_class`` (str, when
        the class names are known); a list of them for a list input.
    """
    single = not isinstance(img, (list, tuple))
    images = [img] if single else list(img)
    if not images:
        raise ValueError('img is an empty list')
    in_channels = getattr(getattr(model, 'backbone', None), 'patch_embed', None)
    in_channels = getattr(getattr(in_channels, 'projection', None), 'in_channels', 3)
    load = Compose(test_pipeline_cfg(model.cfg, from_file=True))
    no_load = Compose(test_pipeline_cfg(model.cfg, from_file=False))
    batch = []
    for item in images:
        if isinstance(item, (str, Path)):
            check_image_file(item)
            try:
                batch.append(load(dict(img_path=str(item))))
            except Exception as err:  # a truncated or non-image file
                raise ValueError(f'cannot read image {item}: {err}') from None
        elif isinstance(item, np.ndarray):
            _check_array(item, in_channels)
            batch.append(
                no_load(dict(img=item, img_shape=item.shape[:2], ori_shape=item.shape[:2]))
            )
        else:
            raise TypeError(f'img must be a path or an np.ndarray, got {type(item).__name__}')
    classes = model.dataset_meta.get('classes') if hasattr(model, 'dataset_meta') else None
    with torch.no_grad():
        samples = model.test_step(pseudo_collate(batch))
    num_scores = samples[0].pred_score.numel()
    if classes and len(classes) != num_scores:
        MMLogger.get_current_instance().warning(
            f'the model has {num_scores} classes but {len(classes)} class names are known '
            "(the head's num_classes and the dataset differ): predictions come without names"
        )
        classes = None
    results = []
    for sample in samples:
        scores = sample.pred_score.detach().float().cpu().numpy()  # bf16 under autocast
        label = int(sample.pred_label.item())
        result = dict(pred_label=label, pred_score=float(scores[label]), pred_scores=scores)
        if classes:
            result['pred_class'] = classes[label]
        results.append(result)
    return results[0] if single else results
