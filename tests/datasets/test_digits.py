"""Tests of DigitsDataset: the fixed stratified split, the images, the ImageNet-style pipeline."""

import random
from collections import Counter

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from torch.utils.data import DataLoader

from mmdeit.datasets import DigitsDataset
from mmdeit.registry import DATASETS, MODELS

BASE = 'configs/digits/_base_/digits_bs64.py'


def _indices(dataset):
    return [dataset.get_data_info(i)['digits_index'] for i in range(len(dataset))]


def test_registered_and_split_sizes():
    train = DATASETS.build(dict(type='DigitsDataset', split='train'))
    val = DATASETS.build(dict(type='DigitsDataset', split='val'))
    assert isinstance(train, DigitsDataset)
    assert (len(train), len(val)) == (1437, 360)
    assert not set(_indices(train)) & set(_indices(val))
    assert len(set(_indices(train)) | set(_indices(val))) == 1797


def test_split_is_deterministic_and_seeded():
    a, b = DigitsDataset(split='val'), DigitsDataset(split='val')
    assert _indices(a) == _indices(b)
    np.testing.assert_array_equal(a[5]['img'], b[5]['img'])
    assert _indices(DigitsDataset(split='val', seed=1)) != _indices(a)
    assert len(DigitsDataset(split='val', val_fraction=0.5)) == 899  # ceil(0.5 * 1797)


def test_split_is_stratified():
    train, val = DigitsDataset(split='train'), DigitsDataset(split='val')
    train_counts = Counter(train.get_gt_labels().tolist())
    val_counts = Counter(val.get_gt_labels().tolist())
    assert sorted(val_counts) == list(range(10))
    for label in range(10):
        total = train_counts[label] + val_counts[label]
        assert abs(val_counts[label] - 0.2 * total) <= 1


def test_classes_and_images():
    dataset = DigitsDataset(split='val')
    assert dataset.CLASSES == tuple('0123456789')
    assert dataset.metainfo['classes'] == tuple(str(i) for i in range(10))
    info = dataset[0]  # no pipeline: the data info itself
    img = info['img']
    assert img.dtype == np.uint8 and img.shape == (8, 8, 3)
    np.testing.assert_array_equal(img[..., 0], img[..., 2])  # grey replicated
    pixels = np.stack([dataset[i]['img'] for i in range(len(dataset))])
    assert pixels.min() == 0 and pixels.max() == 255
    assert set(dataset.get_gt_labels().tolist()) == set(range(10))


def test_indices_keeps_the_first_images():
    full, part = DigitsDataset(split='train'), DigitsDataset(split='train', indices=50)
    assert len(part) == 50
    assert _indices(part) == _indices(full)[:50]


@pytest.mark.parametrize(
    'kwargs, error, match',
    [
        (dict(split='test'), ValueError, 'split must be one of'),
        (dict(val_fraction=0.0), ValueError, 'val_fraction must be in'),
        (dict(val_fraction='0.2'), TypeError, 'val_fraction'),
        (dict(seed=-1), TypeError, 'seed must be'),
        (dict(seed=1.5), TypeError, 'seed must be'),
        (dict(data_root='data/digits'), ValueError, 'takes no data_root'),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        DigitsDataset(**kwargs)


def test_config_pipeline_with_mixup_through_a_dataloader():
    """The digits config's train pipeline, a DataLoader, then the model's Mixup batch augment."""
    cfg = Config.fromfile(BASE)
    with DefaultScope.overwrite_default_scope('mmdeit'):
        dataset = DATASETS.build(dict(cfg.train_dataloader.dataset, indices=16))
        preprocessor = MODELS.build(
            dict(
                type='ClsDataPreprocessor',
                **cfg.data_preprocessor,
                batch_augments=dict(augments=[dict(type='Mixup', alpha=0.8)]),
            )
        )
    loader = DataLoader(dataset, batch_size=8, collate_fn=pseudo_collate)
    batch = next(iter(loader))
    assert batch['inputs'][0].shape == (3, cfg.img_size, cfg.img_size)
    assert batch['inputs'][0].dtype == torch.uint8
    data = preprocessor(batch, training=True)
    assert data['inputs'].shape == (8, 3, cfg.img_size, cfg.img_size)
    assert data['inputs'].dtype == torch.float32
    scores = torch.stack([s.gt_score for s in data['data_samples']])  # (B, 10) mixed labels
    assert scores.shape == (8, 10)
    torch.testing.assert_close(scores.sum(1), torch.ones(8))
    assert (scores > 0).sum(1).max() == 2  # two digits mixed


def _subset_indices(**kwargs):
    return [info['digits_index'] for info in DigitsDataset(**kwargs).load_data_list()]


def _subset_labels(**kwargs):
    return np.array([info['gt_label'] for info in DigitsDataset(**kwargs).load_data_list()])


@pytest.mark.parametrize('subset', [0.1, 0.25, 144, 359])
def test_subset_is_stratified_and_fixed_by_its_seed(subset):
    full = _subset_indices(split='train')
    kept = _subset_indices(split='train', subset=subset, subset_seed=3)
    expected_size = subset if isinstance(subset, int) else int(subset * len(full))
    assert abs(len(kept) - expected_size) <= 1
    assert set(kept) <= set(full) and kept == [i for i in full if i in set(kept)]  # split order
    # stratified: every class in proportion to the split, within one image
    full_counts = np.bincount(_subset_labels(split='train'), minlength=10)
    counts = np.bincount(_subset_labels(split='train', subset=subset, subset_seed=3), minlength=10)
    assert np.all(np.abs(counts - full_counts * len(kept) / len(full)) <= 1), counts
    # the same arguments give the same images (every arm of a study), whatever the global RNG
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    assert _subset_indices(split='train', subset=subset, subset_seed=3) == kept
    # another subset seed, another subset; the split itself (val) is untouched
    assert _subset_indices(split='train', subset=subset, subset_seed=4) != kept
    assert not set(kept) & set(_subset_indices(split='val'))


def test_whole_split_as_subset_is_the_split():
    full = _subset_indices(split='train')
    assert _subset_indices(split='train', subset=1.0) == full
    assert _subset_indices(split='train', subset=len(full), subset_seed=9) == full


def test_subset_of_val_split():
    kept = _subset_indices(split='val', subset=0.5)
    assert len(kept) == 180 and set(kept) <= set(_subset_indices(split='val'))


@pytest.mark.parametrize(
    'kwargs, error, match',
    [
        (dict(subset=0.0), ValueError, r'subset as a fraction must be in \(0, 1\]'),
        (dict(subset=1.5), ValueError, r'subset as a fraction must be in \(0, 1\]'),
        (dict(subset=0), ValueError, 'subset must be a positive number of images'),
        (dict(subset='10%'), TypeError, 'subset must be None, a fraction'),
        (dict(subset=True), TypeError, 'subset must be None, a fraction'),
        (dict(subset=5), ValueError, 'at least the number of classes'),
        (dict(subset=5000), ValueError, 'larger than the train split'),
        (dict(subset=0.1, subset_seed=-1), TypeError, 'subset_seed must be a non-negative int'),
    ],
)
def test_bad_subset_is_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        DigitsDataset(split='train', **kwargs)
