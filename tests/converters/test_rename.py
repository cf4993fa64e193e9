"""The key-renaming helper all conversion directions share."""

import pytest
import torch

from mmdeit.converters.rename import rename_key, rename_keys

TABLE = [
    ('cls_token', 'backbone.cls_token'),
    ('blocks.{}.norm1.', 'backbone.layers.{}.ln1.'),
    ('blocks.{}.ls1.gamma', 'backbone.layers.{}.attn.gamma1.weight'),
    ('head.', 'head.layers.head.'),
]


@pytest.mark.parametrize(
    'key, new',
    [
        ('cls_token', 'backbone.cls_token'),  # exact
        ('cls_token_extra', None),  # an exact entry is not a prefix
        ('blocks.11.norm1.weight', 'backbone.layers.11.ln1.weight'),  # layer index carried
        ('blocks.3.ls1.gamma', 'backbone.layers.3.attn.gamma1.weight'),
        ('blocks.x.norm1.weight', None),  # '{}' is a number
        ('head.bias', 'head.layers.head.bias'),  # prefix
        ('head_dist.bias', None),  # prefixes match whole dotted components
        ('my.head.bias', None),  # ... from the start
    ],
)
def test_rename_key(key, new):
    assert rename_key(key, TABLE) == new
    if new is not None:
        assert rename_key(new, TABLE, reverse=True) == key


def test_rename_keys_keeps_order_and_tensors_and_names_unknown_keys():
    state_dict = {'head.weight': torch.ones(2), 'blocks.0.norm1.bias': torch.zeros(2)}
    out = rename_keys(state_dict, TABLE, 'test')
    assert list(out) == ['head.layers.head.weight', 'backbone.layers.0.ln1.bias']
    assert out['head.layers.head.weight'] is state_dict['head.weight']
    assert rename_keys(out, TABLE, 'test', reverse=True) == state_dict
    with pytest.raises(ValueError, match=r'2 keys of the test state dict .* e\.g\. a\.b, c'):
        rename_keys({**state_dict, 'c': torch.zeros(1), 'a.b': torch.zeros(1)}, TABLE, 'test')


def test_rename_keys_drops_prefixes():
    state_dict = {'cls_token': torch.zeros(1), 'pooler.dense.weight': torch.zeros(1)}
    assert list(rename_keys(state_dict, TABLE, 'test', drop=['pooler.'])) == ['backbone.cls_token']
