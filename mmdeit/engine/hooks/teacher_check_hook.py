"""Measure the distillation teacher's accuracy on the val set once, before training starts."""

import random
from typing import Optional, Tuple

import numpy as np
import torch
from mmengine.dist import all_reduce
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmdeit.registry import HOOKS

__all__ = ['TeacherCheckHook']

#: The key under which the teacher's top-1 accuracy (%) is logged.
ACCURACY_KEY = 'teacher/accuracy_top1'


@HOOKS.register_module()
class TeacherCheckHook(Hook):
    """Log the teacher's top-1 accuracy on the val set before training, to catch a bad teacher.

    A wrong teacher checkpoint, class order, input size or normalisation is otherwise noticed
    only after hours of distillation. In ``before_train`` this hook runs the teacher of a
    :class:`~mmdeit.models.classifiers.DistilledImageClassifier` over the first
    ``max_batches`` batches of the val dataloader, exactly as training feeds it: the model's
    data preprocessor (without batch augments), then ``model.teacher_logits`` (its
    ``teacher_input`` adaptation, channels-last, inference mode). It logs
    ``teacher/accuracy_top1`` (in %, to the message hub and the visualizer's scalars), warns
    when that is near chance level (below chance + 10 % of the way from chance to 100 %, with
    chance = 100 / number of classes: 10.1 % for 1000 classes, 19 % for 10) and, with
    ``min_accuracy``, stops before training when it is lower than that.

    It does nothing (with a log line) for a model without a teacher (loss mode 'none'), a run
    without a val dataloader, and a teacher whose classes differ from the student's (the head's
    ``teacher_num_classes``): the val labels are not its classes. In distributed training each
    rank checks its shard of the val set and the counts are summed. The random states (torch,
    numpy, random) are restored afterwards, so the check leaves the training run unchanged.

    Add it to a config's ``custom_hooks`` next to the others, e.g.
    ``custom_hooks = [..., dict(type='TeacherCheckHook', max_batches=10)]``.

    Args:
        max_batches: At most this many val batches (per rank) are used; None for the whole
            val set. Defaults to 10.
        min_accuracy: If set, a top-1 accuracy (%) below it raises ``RuntimeError`` before
            training starts. Defaults to None (log and warn only).
    """

    priority = 'NORMAL'

    def __init__(self, max_batches: Optional[int] = 10, min_accuracy: Optional[float] = None):
        if max_batches is not None and (
            isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
        ):
            raise ValueError(f'max_batches must be a positive int or None, got {max_batches!r}')
        if min_accuracy is not None and (
            isinstance(min_accuracy, bool)
            or not isinstance(min_accuracy, (int, float))
            or not 0 <= min_accuracy <= 100
        ):
            raise ValueError(
                f'min_accuracy must be a number in [0, 100] (%) or None, got {min_accuracy!r}'
            )
        self.max_batches = max_batches
        self.min_accuracy = min_accuracy

    def before_train(self, runner) -> None:
        """Measure, log and check the teacher's top-1 accuracy on the val set."""
        # Building the val loop, its dataloader's iterator and the first log to the
        # visualizer draw random numbers: restore the states so training runs as without it.
        states = torch.get_rng_state(), np.random.get_state(), random.getstate()
        try:
            self._check(runner)
        finally:
            torch.set_rng_state(states[0])
            np.random.set_state(states[1])
            random.setstate(states[2])

    def _check(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if getattr(model, 'teacher', None) is None or not hasattr(model, 'teacher_logits'):
            runner.logger.info('TeacherCheckHook: the model has no teacher; nothing to check.')
            return
        head = getattr(model, 'head', None)
        teacher_classes = getattr(head, 'teacher_num_classes', None)
        if teacher_classes is not None and teacher_classes != getattr(head, 'num_classes', None):
            runner.logger.info(
                f'TeacherCheckHook: the teacher predicts teacher_num_classes={teacher_classes} '
                f'classes, not the num_classes={head.num_classes} of the val labels; its '
                'accuracy cannot be measured.'
            )
            return
        if runner.val_loop is None:  # built here if not yet
            runner.logger.warning(
                'TeacherCheckHook: no val_dataloader; the teacher is not checked.'
            )
            return
        correct, total, num_classes = self._count(model, runner.val_loop.dataloader)
        counts = torch.tensor([correct, total], dtype=torch.float64)
        classes = torch.tensor([num_classes], dtype=torch.float64)
        all_reduce(counts, op='sum')  # no-ops without distributed training
        all_reduce(classes, op='max')
        correct, total, num_classes = int(counts[0]), int(counts[1]), int(classes[0])
        if total == 0:
            runner.logger.warning('TeacherCheckHook: the val dataloader is empty.')
            return
        accuracy = 100.0 * correct / total
        runner.message_hub.update_scalar(ACCURACY_KEY, accuracy)
        runner.visualizer.add_scalars({ACCURACY_KEY: accuracy}, step=runner.iter)
        runner.logger.info(
            f'TeacherCheckHook: {ACCURACY_KEY} = {accuracy:.2f} on {total} val images'
            + ('' if self.max_batches is None else f' (at most {self.max_batches} batches/rank)')
        )
        chance = 100.0 / num_classes if num_classes else 0.0
        if accuracy < chance + 0.1 * (100.0 - chance):
            runner.logger.warning(
                f'TeacherCheckHook: the teacher is near chance level ({accuracy:.2f}% top-1, '
                f'chance {chance:.2f}% for {num_classes} classes): check teacher_ckpt, the '
                'class order and teacher_input (size, mean/std, channel order).'
            )
        if self.min_accuracy is not None and accuracy < self.min_accuracy:
            raise RuntimeError(
                f"TeacherCheckHook: the teacher's top-1 accuracy {accuracy:.2f}% on the val set "
                f'is below min_accuracy={self.min_accuracy}; training not started. Check '
                'teacher_ckpt, the class order and teacher_input (size, mean/std).'
            )

    def _count(self, model, dataloader) -> Tuple[int, int, int]:
        """(correct, total, number of classes) of the teacher over the first batches."""
        correct = total = num_classes = 0
        for index, batch in enumerate(dataloader):
            if self.max_batches is not None and index >= self.max_batches:
                break
            with torch.no_grad():
                data = model.data_preprocessor(batch, False)
            logits = model.teacher_logits(data['inputs'])
            labels = torch.cat([s.gt_label for s in data['data_samples']]).to(logits.device)
            correct += int((logits.argmax(dim=1) == labels).sum())
            total += labels.numel()
            num_classes = logits.size(1)
        return correct, total, num_classes
