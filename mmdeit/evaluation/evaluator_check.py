"""Fail before the Runner is built when a config's evaluators cannot work with its model."""

from typing import Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config

from .metrics.deit_accuracy import topk_error

__all__ = ['check_evaluators']

_FIELDS = ('val_evaluator', 'test_evaluator')
_ACCURACY = ('Accuracy', 'DeiTAccuracy')
_PER_HEAD = 'PerHeadAccuracy'


def _metrics(evaluator) -> List[dict]:
    """The metric configs of one ``*_evaluator`` field (a dict, a list, or an Evaluator)."""
    if isinstance(evaluator, dict) and 'metrics' in evaluator:
        evaluator = evaluator['metrics']
    if isinstance(evaluator, dict):
        return [evaluator]
    return [m for m in evaluator or () if isinstance(m, dict)]


def _name(metric: dict, scope: Optional[str]) -> Tuple[Optional[str], str]:
    """``(scope, name)`` of a metric's ``type``; a bare name takes the config's scope."""
    kind = metric.get('type', '')
    if not isinstance(kind, str):  # a class, as in a pure-Python config
        return getattr(kind, '__module__', '').split('.')[0], kind.__name__
    if '.' in kind:
        head, name = kind.split('.', 1)
        return head, name
    return scope, kind


def _num_classes(cfg: Config) -> Optional[int]:
    head = (cfg.get('model') or {}).get('head')
    num_classes = head.get('num_classes') if isinstance(head, dict) else None
    return num_classes if isinstance(num_classes, int) else None


def _problems(cfg: Config, fields: Sequence[str]) -> Iterator[str]:
    scope = cfg.get('default_scope')
    num_classes = _num_classes(cfg)
    for field in fields:
        metrics = _metrics(cfg.get(field))
        names = [_name(metric, scope) for metric in metrics]
        for metric, (_, name) in zip(metrics, names):
            topk = metric.get('topk', (1,))
            topk = (topk,) if isinstance(topk, int) else tuple(topk)
            if name in _ACCURACY and num_classes is not None:
                message = topk_error(topk, num_classes, field)
                if message is not None:
                    yield f'{message} (model.head.num_classes={num_classes})'
        reports_heads = any(
            owner == 'mmdeit' and name in _ACCURACY and metric.get('per_head', True)
            for metric, (owner, name) in zip(metrics, names)
        )
        if reports_heads and any(name == _PER_HEAD for _, name in names):
            yield (
                f"{field}: mmdeit's Accuracy already reports the per_head/* keys, and the "
                'PerHeadAccuracy entry would report them twice: remove the PerHeadAccuracy '
                "entry (or use type='mmpretrain.Accuracy' next to it)"
            )


def check_evaluators(cfg: Config, fields: Sequence[str] = _FIELDS) -> None:
    """Check the evaluators of a config against its model, before anything is built.

    - Every ``Accuracy``'s ``topk`` fits ``model.head.num_classes`` (mmpretrain's Accuracy
      finds a top-5 of 3 classes impossible only when validation first runs, after an epoch).
    - mmdeit's ``Accuracy`` (which reports the per-head keys) is not listed next to a
      ``PerHeadAccuracy`` (mmengine would refuse the duplicate keys after the first epoch).

    Args:
        cfg: The full runner config.
        fields: The evaluator fields to check. Defaults to ('val_evaluator',
            'test_evaluator'): a training run checks the test evaluator too, so a child config
            that changed ``val_evaluator`` alone hears of its ``test_evaluator`` before it trains.

    Raises:
        ValueError: naming each field that is wrong and how to fix it.
    """
    problems = list(_problems(cfg, fields))
    if problems:
        raise ValueError('\n'.join(problems))
