"""An ``ImageClassifier`` that trains a DeiT student against a frozen teacher."""

import copy
import inspect
import os.path as osp
from typing import List, Optional

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from mmengine.runner.checkpoint import load_state_dict
from mmpretrain.models.classifiers import ImageClassifier
from mmpretrain.structures import DataSample

from mmdeit.engine.checkpoint_loader import load_checkpoint_file
from mmdeit.registry import MODELS

from ..heads import DeiTClsHead
from .teacher_input import TeacherInput, check_teacher_size, student_normalisation


class _TeacherRef:
    """Holds the teacher outside the module tree of the student.

    As a plain attribute (not a submodule) the teacher is invisible to ``state_dict()``,
    mmengine's ``get_state_dict`` (checkpoints), ``parameters()`` (optimizer constructors), DDP
    and ``init_weights``. A deep copy of the student (e.g. an EMA model) shares the frozen teacher
    instead of duplicating it.
    """

    def __init__(self, module: nn.Module):
        self.module = module

    def __deepcopy__(self, memo: dict) -> '_TeacherRef':
        return self


def _is_local_path(path: str) -> bool:
    return '://' not in path


def _teacher_num_classes(teacher: nn.Module) -> Optional[int]:
    """The number of classes of a teacher classifier, or None if it cannot be told."""
    candidates = (
        getattr(getattr(teacher, 'head', None), 'num_classes', None),  # ImageClassifier
        getattr(getattr(teacher, 'model', None), 'num_classes', None),  # TimmClassifier
        getattr(teacher, 'num_classes', None),
    )
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


_DISTILLED_TYPES = ('DistilledImageClassifier', 'mmdeit.DistilledImageClassifier')


def student_model_cfg(model_cfg: dict) -> dict:
    """The config of the student alone: what evaluation and inference build.

    A ``DistilledImageClassifier`` config becomes an ``ImageClassifier`` config with the same
    backbone, neck, head and data preprocessor, and none of the teacher's arguments
    (``teacher``, ``teacher_ckpt``, ``teacher_channels_last``, ``teacher_input`` and any later
    one), so neither the teacher nor its checkpoint is needed. The head's arguments, such as
    ``teacher_num_classes`` (the shape of ``head_dist``), are kept, so the checkpoints of the
    distilled model load strictly into that model.
    Any other model config is returned unchanged (as a copy).

    Args:
        model_cfg: A model config dict.

    Returns:
        A new model config dict.
    """
    cfg = copy.deepcopy(dict(model_cfg))
    model_type = cfg.get('type')
    if model_type in _DISTILLED_TYPES or model_type is DistilledImageClassifier:
        student_args = inspect.signature(ImageClassifier.__init__).parameters
        for key in inspect.signature(DistilledImageClassifier.__init__).parameters:
            if key not in student_args:
                cfg.pop(key, None)
        cfg['type'] = 'ImageClassifier'
    return cfg


@MODELS.register_module()
class DistilledImageClassifier(ImageClassifier):
    """Image classifier with a frozen teacher for DeiT's distillation through attention.

    The student is an ``ImageClassifier`` whose head is a :class:`~mmdeit.models.heads.DeiTClsHead`
    (usually on a ``DistilledVisionTransformer``); the head's ``DistillationLoss`` mode says how
    the teacher is used. In training (mode 'loss') the teacher gets exactly the student's input
    batch, i.e. after the data preprocessor and the batch augments (Mixup/CutMix), runs under
    ``torch.inference_mode`` (no autograd bookkeeping at all) in eval mode, and its logits (a
    normal tensor, usable as a loss target) are passed to the head's loss. A teacher that
    expects another resolution or normalisation gets the batch resized and re-normalised by
    ``teacher_input`` (under the same inference mode, in its memory format). A teacher with
    other classes is distilled into a ``head_dist`` of the head's ``teacher_num_classes``.
    Validation and prediction use the student only.

    The teacher is frozen (``requires_grad=False``), stays in eval mode through ``.train()``,
    moves with the student (``.to()``, ``.cuda()``, ``.half()``, ...), and is not a submodule:
    it is absent from ``state_dict()``, checkpoints, the optimizer and DDP. A checkpoint of this
    model therefore loads strictly into an ``ImageClassifier`` with the same backbone and head.

    Args:
        backbone: Backbone config, see ``ImageClassifier``.
        neck: Neck config. Defaults to None.
        head: Config of a ``DeiTClsHead``. Defaults to None, which is an error.
        teacher: The teacher: a model config dict of any classifier registered in the
            ``mmdeit`` scope or its parent mmpretrain (e.g. ``ImageClassifier``, or
            ``TimmClassifier`` for timm's ``regnety_160``, the official teacher), the path of a
            config file whose ``model`` is such a dict, or an ``nn.Module``. Its ``tensor``-mode
            output must be logits (B, T) with T the head's ``teacher_num_classes`` (by default
            its ``num_classes``); where the teacher's class count can be read it is checked.
            Required for loss modes 'soft' and 'hard'; ignored (not built, with a warning) in
            mode 'none'. Defaults to None.
        teacher_ckpt: Checkpoint of the teacher (local path, read by mmdeit's safe loader, or
            a URL mmengine's ``CheckpointLoader`` knows), loaded strictly. Its weights may be
            the whole file or under 'state_dict' or 'model'. If None the teacher keeps the
            weights it is built with (e.g. timm's ``pretrained=True``); its ``init_cfg`` is not
            run. Defaults to None.
        teacher_channels_last: Run the teacher in the channels-last memory format (weights
            converted once, each input batch per call), usually faster for convnet teachers
            such as RegNetY on CPU (oneDNN) and on GPUs with tensor cores. Defaults to False.
        teacher_input: How the teacher's input differs from the student's:
            ``dict(size=(H, W), mean=[...], std=[...], interpolation='bilinear')``, every key
            optional (see :class:`~mmdeit.models.classifiers.teacher_input.TeacherInput`). The
            student's batch is resized to ``size`` and re-normalised from the data
            preprocessor's mean/std to ``mean``/``std``, both in the 0-255 scale and in the
            channel order the preprocessor outputs (RGB if its ``to_rgb``, else as loaded).
            ``size`` is checked at build time against a ViT-like teacher's patch size; for
            other teachers it cannot be told (a size they cannot take fails at their first
            forward, e.g. in ``TeacherCheckHook``). Defaults to None: the student's batch as is.
        eval_teacher: In prediction (validation), also run the teacher on the batch and label
            every sample with its ``teacher_pred_label``, for the teacher's top-1 and its
            agreement with the student in :class:`~mmdeit.evaluation.PerHeadAccuracy`. Costs
            one teacher forward per validation batch; nothing without a teacher. Defaults to
            True.
        pretrained: Checkpoint of the student, see ``ImageClassifier``. Defaults to None.
        train_cfg: Training setting, e.g. ``dict(augments=[...])``. Defaults to None.
        data_preprocessor: Data preprocessor config. Defaults to None
            (``ClsDataPreprocessor``).
        init_cfg: Initialization config of the student. Defaults to None.
    """

    def __init__(
        self,
        backbone: dict,
        neck: Optional[dict] = None,
        head: Optional[dict] = None,
        teacher: Optional[dict | str | nn.Module] = None,
        teacher_ckpt: Optional[str] = None,
        teacher_channels_last: bool = False,
        teacher_input: Optional[dict] = None,
        eval_teacher: bool = True,
        pretrained: Optional[str] = None,
        train_cfg: Optional[dict] = None,
        data_preprocessor: Optional[dict] = None,
        init_cfg: Optional[dict] = None,
    ):
        if teacher_ckpt is not None:
            if not isinstance(teacher_ckpt, str):
                raise TypeError(
                    f'teacher_ckpt must be a path or URL string, got {type(teacher_ckpt).__name__}'
                )
            if teacher is None:
                raise ValueError(f'teacher_ckpt {teacher_ckpt!r} is given but teacher is None')
            if _is_local_path(teacher_ckpt) and not osp.isfile(teacher_ckpt):
                raise FileNotFoundError(f'teacher_ckpt {teacher_ckpt!r} does not exist')
        if teacher is not None and not isinstance(teacher, (dict, str, nn.Module)):
            raise TypeError(
                'teacher must be a model config dict, a config file path or an '
                f'nn.Module, got {type(teacher).__name__}'
            )
        if not isinstance(teacher_channels_last, bool):
            raise TypeError(
                'teacher_channels_last must be a bool (True or False), got '
                f'{type(teacher_channels_last).__name__}'
            )
        if not isinstance(eval_teacher, bool):
            raise TypeError(
                f'eval_teacher must be a bool (True or False), got {type(eval_teacher).__name__}'
            )
        if head is None:
            raise ValueError('DistilledImageClassifier needs a head (a DeiTClsHead config)')
        # ``ImageClassifier`` builds its parts with mmpretrain's registry, which without a
        # default scope resolves 'DeiTClsHead' to mmpretrain's head; build them in ours
        # (whatever the default scope; an explicit '_scope_' in a part still wins).
        backbone, neck, head = (
            MODELS.build({'_scope_': 'mmdeit', **part}) if isinstance(part, dict) else part
            for part in (backbone, neck, head)
        )
        super().__init__(
            backbone=backbone,
            neck=neck,
            head=head,
            pretrained=pretrained,
            train_cfg=train_cfg,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg,
        )
        if not isinstance(self.head, DeiTClsHead):
            raise TypeError(
                f'DistilledImageClassifier needs a DeiTClsHead head, got {type(self.head).__name__}'
            )

        mode = self.head.loss_module.mode
        self.teacher_channels_last = teacher_channels_last
        self.eval_teacher = eval_teacher
        self._teacher_ref: Optional[_TeacherRef] = None
        self.teacher_input: Optional[TeacherInput] = None
        if teacher_input is not None:
            self.teacher_input = TeacherInput(
                teacher_input, *student_normalisation(self.data_preprocessor)
            )
        if not self.head.loss_module.needs_teacher:
            if teacher is not None:
                MMLogger.get_current_instance().warning(
                    "The distillation loss mode is 'none': the teacher is not used, so it is "
                    'not built.'
                )
            return
        if teacher is None:
            raise ValueError(
                f'distillation loss mode {mode!r} needs a teacher: set teacher '
                '(a model config dict or a config file path) and teacher_ckpt, '
                "or use mode='none'"
            )
        teacher = self._build_teacher(teacher)
        if teacher_ckpt is not None:
            self._load_teacher_ckpt(teacher, teacher_ckpt)
        else:
            MMLogger.get_current_instance().warning(
                'teacher_ckpt is None: the teacher keeps the weights it was built with.'
            )
        if self.teacher_input is not None and self.teacher_input.size is not None:
            if not check_teacher_size(teacher, self.teacher_input.size):
                MMLogger.get_current_instance().info(
                    f'teacher_input.size {self.teacher_input.size} cannot be checked against '
                    f'the teacher {type(teacher).__name__} (no ViT patch embedding found); a '
                    'size it cannot take fails at its first forward.'
                )
        teacher.requires_grad_(False)
        teacher.eval()
        if teacher_channels_last:
            teacher.to(memory_format=torch.channels_last)
        self._teacher_ref = _TeacherRef(teacher)

    @property
    def teacher(self) -> Optional[nn.Module]:
        """The frozen teacher, or None (loss mode 'none')."""
        ref = self.__dict__.get('_teacher_ref')  # absent while the parent class builds
        return None if ref is None else ref.module

    def _build_teacher(self, teacher: dict | str | nn.Module) -> nn.Module:
        """Build the teacher and check its class count against the head's."""
        if isinstance(teacher, str):
            if not osp.isfile(teacher):
                raise FileNotFoundError(f'teacher config file {teacher!r} does not exist')
            cfg = Config.fromfile(teacher)
            if not isinstance(cfg.get('model'), dict):
                raise ValueError(f'teacher config file {teacher!r} has no model dict')
            teacher = cfg.model.to_dict()
        if isinstance(teacher, dict):
            if 'type' not in teacher:
                raise ValueError(f'teacher config needs a type, got {teacher!r}')
            teacher = MODELS.build(copy.deepcopy(teacher))
        num_classes = _teacher_num_classes(teacher)
        expected = self.head.teacher_num_classes
        if num_classes is None or num_classes == expected:
            return teacher
        if expected == self.head.num_classes:
            raise ValueError(
                f'teacher has {num_classes} classes but the student head has '
                f'num_classes={self.head.num_classes}; they must match, or, for a teacher with '
                f"other classes, set the head's teacher_num_classes={num_classes} (head_dist "
                "then predicts the teacher's classes; use inference_mode='cls')"
            )
        raise ValueError(
            f'teacher has {num_classes} classes but the student head has '
            f'teacher_num_classes={expected}; they must match'
        )

    @staticmethod
    def _load_teacher_ckpt(teacher: nn.Module, teacher_ckpt: str) -> None:
        """Load the teacher's weights strictly with mmengine's checkpoint loader."""
        logger = MMLogger.get_current_instance()
        checkpoint = load_checkpoint_file(teacher_ckpt, map_location='cpu', logger=logger)
        state_dict = checkpoint
        for key in ('state_dict', 'model'):  # mmengine / official DeiT layouts
            if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
                state_dict = checkpoint[key]
                break
        # Checkpoints saved from a DDP-wrapped model prefix every key with 'module.'.
        state_dict = {k.removeprefix('module.'): v for k, v in state_dict.items()}
        load_state_dict(teacher, state_dict, strict=True, logger=logger)
        logger.info(f'Loaded the teacher from {teacher_ckpt}')

    def _apply(self, fn, recurse: bool = True):
        # ``.to()``, ``.cuda()``, ``.half()``, ... all go through ``_apply``; the teacher is not
        # a submodule, so move it explicitly.
        super()._apply(fn, recurse)
        if recurse and self.teacher is not None:
            self.teacher._apply(fn)
        return self

    def train(self, mode: bool = True) -> 'DistilledImageClassifier':
        """Set the student's mode; the teacher stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits (B, T) on the student's batch ``inputs``, without gradient.

        The batch is adapted by ``teacher_input`` (if set) and the teacher run, both under
        ``torch.inference_mode`` (``torch.no_grad`` while ``torch.compile`` traces) and in the
        teacher's memory format; the logits are cloned out of it into a normal tensor (B x T, a
        negligible copy), so a loss may save them for its backward pass. Under autocast (``--amp``,
        the caller's context) the teacher runs under it too: its convolutions and linears compute
        in the low precision (bf16 on a CPU), in channels-last if ``teacher_channels_last``, and
        the logits come back in that dtype.
        """
        teacher = self.teacher
        if teacher is None:
            raise RuntimeError('this model has no teacher (distillation loss mode is none)')
        if teacher.training:
            teacher.eval()
        # While torch.compile traces: no_grad (torch 2.11's AOT autograd failed on the
        # inference-mode tensors of the teacher's graph: a KeyError on a storage weakref).
        no_grad = torch.no_grad if torch.compiler.is_compiling() else torch.inference_mode
        with no_grad():
            channels_last = self.teacher_channels_last and inputs.dim() == 4
            if channels_last:  # before the resize: it then runs in channels-last too
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            if self.teacher_input is not None:
                inputs = self.teacher_input(inputs)
                if channels_last:  # a no-op unless an op changed the layout
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
            if isinstance(teacher, BaseModel):
                logits = teacher(inputs, mode='tensor')
            else:
                logits = teacher(inputs)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise TypeError(f'the teacher must output logits of shape (B, num_classes), got {got}')
        return logits.clone()  # outside inference mode: a normal tensor, no grad

    def loss(self, inputs: torch.Tensor, data_samples: List[DataSample]) -> dict:
        """Losses of a batch (already preprocessed and batch-augmented).

        Args:
            inputs: The student's input batch (B, C, H, W); the teacher sees the same tensor,
                or its adaptation by ``teacher_input``.
            data_samples: The annotations of the batch.

        Returns:
            dict[str, Tensor]: ``loss_cls`` and ``loss_distill``, see ``DistillationLoss``.
        """
        # The teacher first: its activations are freed before the student's forward allocates
        # the activations it keeps for backward, so the two never add up in memory.
        teacher_logits = self.teacher_logits(inputs) if self.teacher is not None else None
        feats = self.extract_feat(inputs)
        return self.head.loss(feats, data_samples, teacher_logits=teacher_logits)

    def predict(
        self, inputs: torch.Tensor, data_samples: Optional[List[DataSample]] = None, **kwargs
    ) -> List[DataSample]:
        """The student's predictions; with ``eval_teacher``, each also gets the teacher's label.

        Args:
            inputs: The input batch (B, C, H, W).
            data_samples: The annotations of the batch. Defaults to None.
            **kwargs: Passed to the head's ``predict``.

        Returns:
            The data samples with the student's predictions and, if the model has a teacher
            and ``eval_teacher``, ``teacher_pred_label`` (its argmax).
        """
        predictions = super().predict(inputs, data_samples, **kwargs)
        if self.eval_teacher and self.teacher is not None:
            teacher_labels = self.teacher_logits(inputs).argmax(dim=1)  # (B, )
            for i, sample in enumerate(predictions):
                sample.set_field(teacher_labels[i : i + 1], 'teacher_pred_label')
        return predictions
