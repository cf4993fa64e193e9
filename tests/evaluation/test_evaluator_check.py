"""check_evaluators: a config's evaluators against its model, before anything is built."""

import pytest
from mmengine.config import Config

from mmdeit.evaluation import check_evaluators


def _cfg(val, test=None, num_classes=3, scope='mmdeit') -> Config:
    return Config(
        dict(
            default_scope=scope,
            model=dict(head=dict(type='DeiTClsHead', num_classes=num_classes)),
            val_evaluator=val,
            test_evaluator=val if test is None else test,
        )
    )


@pytest.mark.parametrize(
    'evaluator',
    [
        dict(type='Accuracy', topk=(1,)),
        dict(type='Accuracy', topk=3),
        dict(type='Accuracy'),
        [dict(type='mmpretrain.Accuracy', topk=(1,)), dict(type='PerHeadAccuracy')],
        [dict(type='Accuracy', per_head=False), dict(type='PerHeadAccuracy')],
        dict(type='Evaluator', metrics=[dict(type='Accuracy', topk=(1, 2))]),
        None,
    ],
)
def test_configs_that_work_pass(evaluator):
    check_evaluators(_cfg(evaluator))


@pytest.mark.parametrize(
    'evaluator',
    [
        dict(type='Accuracy', topk=(1, 5)),
        dict(type='mmpretrain.Accuracy', topk=5),
        [dict(type='DeiTAccuracy', topk=(1, 5)), dict(type='DumpResults', out_file_path='x')],
    ],
)
def test_a_top_k_beyond_the_heads_classes_names_the_field_and_the_fix(evaluator):
    with pytest.raises(ValueError) as err:
        check_evaluators(_cfg(evaluator))
    message = str(err.value)
    for field in ('val_evaluator', 'test_evaluator'):
        assert (
            f'{field}: Accuracy topk=' in message and 'asks for top-5 of only 3 classes' in message
        )
        assert f'`{field} = dict(type="Accuracy", topk=(1,))`' in message
    assert 'model.head.num_classes=3' in message


def test_only_the_fields_asked_for_are_checked():
    cfg = _cfg(dict(type='Accuracy', topk=(1, 5)), test=dict(type='Accuracy', topk=(1,)))
    check_evaluators(cfg, fields=('test_evaluator',))  # what tools/test.py checks
    with pytest.raises(ValueError, match='val_evaluator'):
        check_evaluators(cfg)


def test_per_head_keys_twice_are_refused():
    cfg = _cfg([dict(type='Accuracy', topk=(1,)), dict(type='PerHeadAccuracy')], num_classes=10)
    with pytest.raises(ValueError, match='remove the PerHeadAccuracy entry'):
        check_evaluators(cfg)
    # in another scope a bare 'Accuracy' is that scope's, without per-head keys
    check_evaluators(Config(dict(cfg.to_dict(), default_scope='mmpretrain')))


def test_without_a_head_class_count_there_is_nothing_to_compare():
    cfg = Config(dict(model=dict(type='ImageClassifier'), val_evaluator=dict(type='Accuracy')))
    check_evaluators(cfg)
