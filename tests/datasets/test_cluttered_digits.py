"""Tests of ClutteredDigitsDataset: deterministic canvases, the placed digit, clutter, splits."""

import random

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from mmdeit.datasets import ClutteredDigitsDataset, DigitsDataset
from mmdeit.registry import DATASETS

BASE = 'configs/digits/_base_/digits_bs64.py'
DIGITS = load_digits()


@pytest.fixture(scope='module')
def val():
    """The default val split (360 canvases), built once."""
    return ClutteredDigitsDataset(split='val').load_data_list()


def _scaled_digit(index, scale=2):
    grey = np.round(DIGITS.images[index] * (255.0 / 16.0)).astype(np.uint8)
    return np.repeat(np.repeat(grey, scale, axis=0), scale, axis=1)


def test_registered_with_the_digits_splits():
    dataset = DATASETS.build(dict(type='ClutteredDigitsDataset', split='val'))
    assert isinstance(dataset, ClutteredDigitsDataset) and len(dataset) == 360
    assert dataset.CLASSES == tuple('0123456789')
    plain = DigitsDataset(split='val')
    assert [dataset.get_data_info(i)['digits_index'] for i in range(len(dataset))] == [
        plain.get_data_info(i)['digits_index'] for i in range(len(plain))
    ]
    assert 'Canvas: \t32x32, digits x2, 4 fragments of 6x6' in repr(dataset)


def test_shapes_dtypes_and_labels_of_the_source_digits(val):
    for info in val:
        img = info['img']
        assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
        assert info['img_shape'] == info['ori_shape'] == (32, 32)
        np.testing.assert_array_equal(img[..., 0], img[..., 1])  # grey replicated
        np.testing.assert_array_equal(img[..., 0], img[..., 2])
        assert info['gt_label'] == DIGITS.target[info['digits_index']]
        assert len(info['clutter_indices']) == 4
        # the clutter comes from digits of other classes
        assert all(DIGITS.target[i] != info['gt_label'] for i in info['clutter_indices'])
    assert {info['gt_label'] for info in val} == set(range(10))


def test_the_placed_digit_lies_inside_the_canvas(val):
    positions = set()
    for info in val:
        top, left, bottom, right = info['digit_box']
        assert 0 <= top and 0 <= left and bottom <= 32 and right <= 32
        assert (bottom - top, right - left) == (16, 16)
        # the digit is all there (clutter can only brighten it: pixel-wise maximum)
        digit = _scaled_digit(info['digits_index'])
        assert np.all(info['img'][top:bottom, left:right, 0] >= digit)
        positions.add((top, left))
    assert len(positions) > 100  # translated: positions all over the canvas
    tops = [p[0] for p in positions]
    assert min(tops) <= 2 and max(tops) >= 14


def test_without_clutter_the_canvas_is_the_digit_alone():
    for info in ClutteredDigitsDataset(split='val', num_fragments=0, indices=30):
        top, left, bottom, right = info['digit_box']
        expected = np.zeros((32, 32), dtype=np.uint8)
        expected[top:bottom, left:right] = _scaled_digit(info['digits_index'])
        np.testing.assert_array_equal(info['img'][..., 0], expected)
        assert info['clutter_indices'] == ()


def test_deterministic_for_a_seed_whatever_the_global_random_state(val):
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    again = ClutteredDigitsDataset(split='val').load_data_list()
    for a, b in zip(val, again):
        np.testing.assert_array_equal(a['img'], b['img'])
        assert a['digit_box'] == b['digit_box'] and a['clutter_indices'] == b['clutter_indices']
    other = ClutteredDigitsDataset(split='val', clutter_seed=1).load_data_list()
    assert [i['gt_label'] for i in other] == [i['gt_label'] for i in val]  # same digits
    assert sum(not np.array_equal(a['img'], b['img']) for a, b in zip(val, other)) > 350


def test_an_image_is_the_same_in_every_subset(val):
    by_index = {info['digits_index']: info['img'] for info in val}
    subset = ClutteredDigitsDataset(split='val', subset=0.25, subset_seed=3).load_data_list()
    assert len(subset) == 90
    for info in subset:
        np.testing.assert_array_equal(info['img'], by_index[info['digits_index']])


def test_the_clutter_differs_per_image(val):
    clutter = []
    for info in val:
        top, left, bottom, right = info['digit_box']
        outside = info['img'][..., 0].copy()
        outside[top:bottom, left:right] = 0  # the clutter around the digit
        clutter.append(outside.tobytes())
    assert len(set(clutter)) == len(val)
    assert len({info['clutter_indices'] for info in val}) == len(val)


@pytest.mark.parametrize('knob, values', [('num_fragments', (0, 2, 8)), ('fragment_size', (2, 6))])
def test_the_knob_adds_clutter(knob, values):
    inked = []
    for value in values:
        dataset = ClutteredDigitsDataset(split='val', **{knob: value})
        inked.append(np.mean([(info['img'] > 0).sum() for info in dataset]))
    assert inked == sorted(inked) and len(set(inked)) == len(inked), inked


def test_canvas_size_and_digit_scale():
    small = ClutteredDigitsDataset(
        split='val', canvas_size=12, digit_scale=1, fragment_size=3, indices=20
    )
    for info in small:
        assert info['img'].shape == (12, 12, 3)
        top, left, bottom, right = info['digit_box']
        assert (bottom - top, right - left) == (8, 8) and bottom <= 12 and right <= 12
    exact = ClutteredDigitsDataset(split='val', canvas_size=16, num_fragments=0, indices=5)
    assert all(info['digit_box'] == (0, 0, 16, 16) for info in exact)  # no room to move


def test_train_and_val_are_disjoint_placed_and_as_clutter():
    train = ClutteredDigitsDataset(split='train').load_data_list()
    val = ClutteredDigitsDataset(split='val').load_data_list()
    train_digits = {info['digits_index'] for info in train}
    val_digits = {info['digits_index'] for info in val}
    assert len(train_digits) == 1437 and len(val_digits) == 360
    assert not train_digits & val_digits
    assert set().union(*(info['clutter_indices'] for info in train)) <= train_digits
    assert set().union(*(info['clutter_indices'] for info in val)) <= val_digits


@pytest.mark.parametrize(
    'kwargs, error, match',
    [
        (dict(canvas_size=15), ValueError, r'canvas_size must be an int >= 16 \(8 x digit_scale'),
        (dict(canvas_size=32.0), TypeError, 'canvas_size must be an int'),
        (dict(digit_scale=0), ValueError, 'digit_scale must be an int >= 1'),
        (dict(digit_scale=True), TypeError, 'digit_scale must be an int'),
        (dict(num_fragments=-1), ValueError, 'num_fragments must be an int >= 0'),
        (dict(num_fragments=1.5), TypeError, 'num_fragments must be an int'),
        (dict(fragment_size=0), ValueError, r'fragment_size must be an int in \[1, 16\]'),
        (dict(fragment_size=17), ValueError, r'fragment_size must be an int in \[1, 16\]'),
        (dict(fragment_size='6'), TypeError, 'fragment_size must be an int'),
        (dict(clutter_seed=-1), ValueError, 'clutter_seed must be an int >= 0'),
        (dict(split='test'), ValueError, 'split must be one of'),
        (dict(subset=1.5), ValueError, 'subset as a fraction'),
        (dict(data_root='data/digits'), ValueError, 'takes no data_root'),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        ClutteredDigitsDataset(**kwargs)


def test_plugs_into_the_digits_config_pipeline():
    """The digits config's train dataset with the type swapped, through a DataLoader."""
    cfg = Config.fromfile(BASE)
    with DefaultScope.overwrite_default_scope('mmdeit'):
        dataset = DATASETS.build(
            dict(cfg.train_dataloader.dataset, type='ClutteredDigitsDataset', indices=8)
        )
    batch = next(iter(DataLoader(dataset, batch_size=8, collate_fn=pseudo_collate)))
    assert len(batch['inputs']) == 8
    assert batch['inputs'][0].shape == (3, cfg.img_size, cfg.img_size)
    assert batch['inputs'][0].dtype == torch.uint8
    labels = [sample.gt_label.item() for sample in batch['data_samples']]
    assert labels == [dataset.get_data_info(i)['gt_label'] for i in range(8)]
