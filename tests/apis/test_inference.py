import logging

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from mmengine.config import Config
from mmengine.logging import MMLogger
from PIL import Image

from mmdeit.apis import inference_model, init_model
from mmdeit.models.heads import DeiTClsHead

from ..conftest import TINY_ARCH

CLASSES = ('cat', 'dog', 'fox')


def _config(tmp_path, model_type='ImageClassifier', **model_extra):
    cfg = dict(
        default_scope='mmdeit',
        model=dict(
            type=model_type,
            data_preprocessor=dict(
                num_classes=3,
                mean=[123.675, 116.28, 103.53],
                std=[58.395, 57.12, 57.375],
                to_rgb=True,
            ),
            backbone=dict(
                type='DistilledVisionTransformer', arch=TINY_ARCH, img_size=32, patch_size=8
            ),
            head=dict(type='DeiTClsHead', num_classes=3, in_channels=32),
            **model_extra,
        ),
        test_pipeline=[
            dict(type='LoadImageFromFile'),
            dict(
                type='ResizeEdge', scale=36, edge='short', backend='pillow', interpolation='bicubic'
            ),
            dict(type='CenterCrop', crop_size=32),
            dict(type='PackInputs'),
        ],
        test_dataloader=dict(dataset=dict(type='CustomDataset', metainfo=dict(classes=CLASSES))),
    )
    path = tmp_path / 'tiny.py'
    Config(cfg).dump(str(path))
    return str(path)


@pytest.fixture
def trained(tmp_path):
    """A config and a checkpoint of a tiny classifier (classes stored in the meta)."""
    config = _config(tmp_path)
    model = init_model(config)
    ckpt = tmp_path / 'tiny.pth'
    torch.save(
        {'meta': {'dataset_meta': {'classes': list(CLASSES)}}, 'state_dict': model.state_dict()},
        ckpt,
    )
    return config, str(ckpt), model


def _image(path, size=(40, 52), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_init_model_loads_checkpoint_and_classes(trained):
    config, ckpt, model = trained
    again = init_model(config, ckpt)
    assert not again.training
    assert again.dataset_meta['classes'] == CLASSES
    assert isinstance(again.head, DeiTClsHead)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_inference_on_path_array_and_list(trained, tmp_path):
    config, ckpt, _ = trained
    model = init_model(config, ckpt)
    path = _image(tmp_path / 'a.png')
    result = inference_model(model, path)
    assert set(result) == {'pred_label', 'pred_score', 'pred_scores', 'pred_class'}
    assert result['pred_scores'].shape == (3,)
    assert abs(result['pred_scores'].sum() - 1) < 1e-5
    assert result['pred_class'] == CLASSES[result['pred_label']]
    assert result['pred_score'] == result['pred_scores'].max()
    bgr = np.asarray(Image.open(path))[..., ::-1].copy()
    from_array = inference_model(model, bgr)
    np.testing.assert_allclose(from_array['pred_scores'], result['pred_scores'], atol=1e-6)
    batch = inference_model(model, [path, _image(tmp_path / 'b.png', seed=1)])
    assert isinstance(batch, list) and len(batch) == 2
    np.testing.assert_allclose(batch[0]['pred_scores'], result['pred_scores'], atol=1e-6)


def test_inference_under_bf16_autocast_gives_float32_scores(trained, tmp_path):
    """A user's ``with torch.autocast('cpu', torch.bfloat16): inference_model(...)``: the head's
    bf16 scores come back as float32 numpy arrays (numpy has no bf16), close to fp32's."""
    config, ckpt, _ = trained
    model = init_model(config, ckpt)
    paths = [_image(tmp_path / f'{i}.png', seed=i) for i in range(2)]
    want = inference_model(model, paths)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = inference_model(model, paths)
    for g, w in zip(got, want, strict=True):
        assert g['pred_scores'].dtype == np.float32
        assert g['pred_score'] == g['pred_scores'].max()
        np.testing.assert_allclose(g['pred_scores'], w['pred_scores'], atol=0.02)


def test_fewer_class_names_than_classes_predicts_without_names(trained, tmp_path):
    # A head with more classes than the dataset names (a placeholder num_classes left too
    # large): predictions still come, without names, and a warning says why.
    config, ckpt, _ = trained
    model = init_model(config, ckpt)
    model.dataset_meta = {'classes': CLASSES[:2]}
    result = inference_model(model, _image(tmp_path / 'a.png'))
    assert 'pred_class' not in result and result['pred_scores'].shape == (3,)


def test_init_model_without_checkpoint_logs_one_warning(tmp_path):
    """Not mmengine's line per parameter from ``init_weights`` (it prints them where no log
    file is open): the warning that the weights are random, and the logger's level as before."""
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    level = logger.level
    try:
        init_model(_config(tmp_path))
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if 'init_weights' in r.getMessage()]
    shown = [r.getMessage() for r in records if r.levelno >= logging.INFO]
    assert shown == ['init_model: no checkpoint, random weights']
    assert logger.level == level


def test_distilled_config_builds_without_its_teacher(tmp_path):
    config = _config(
        tmp_path,
        model_type='DistilledImageClassifier',
        teacher=dict(
            type='ImageClassifier',
            backbone=dict(type='ResNet', depth=18),
            head=dict(type='LinearClsHead', num_classes=3, in_channels=512),
        ),
        teacher_ckpt=str(tmp_path / 'missing_teacher.pth'),
    )
    model = init_model(config)
    assert type(model).__name__ == 'ImageClassifier'
    assert not hasattr(model, 'teacher')


def test_override_inference_mode(trained):
    config, ckpt, _ = trained
    model = init_model(config, ckpt, **{'model.head.inference_mode': 'cls'})
    assert model.head.inference_mode == 'cls'


def test_test_pipeline_matches_official_preprocessing(tmp_path):
    """The DeiT recipe's eval preprocessing equals the official torchvision transform."""
    cfg = Config.fromfile('configs/deit/deit-tiny_8xb128_in1k.py')
    model = init_model(cfg)
    path = _image(tmp_path / 'big.png', size=(300, 380))
    from mmengine.dataset import Compose, pseudo_collate

    data = pseudo_collate([Compose(cfg.test_pipeline)(dict(img_path=path))])
    ours = model.data_preprocessor(data)['inputs'][0]
    official = T.Compose(
        [
            T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )(Image.open(path).convert('RGB'))
    assert ours.shape == official.shape == (3, 224, 224)
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    'shape, match',
    [((32, 32), r'\(H, W, 3\)'), ((32, 32, 4), r'\(H, W, 3\)'), ((32, 32, 1), r'\(H, W, 3\)')],
)
def test_bad_array_shapes(trained, shape, match):
    config, ckpt, _ = trained
    model = init_model(config, ckpt)
    with pytest.raises(ValueError, match=match):
        inference_model(model, np.zeros(shape, np.uint8))


def test_bad_inputs(trained, tmp_path):
    config, ckpt, _ = trained
    model = init_model(config, ckpt)
    bad = tmp_path / 'broken.png'
    good = _image(tmp_path / 'ok.png')
    bad.write_bytes(open(good, 'rb').read()[:60])  # truncated file
    with pytest.raises(ValueError, match='cannot read image'):
        inference_model(model, str(bad))
    with pytest.raises(FileNotFoundError, match='nope.png'):
        inference_model(model, str(tmp_path / 'nope.png'))
    with pytest.raises(ValueError, match='uint8'):
        inference_model(model, np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match='empty'):
        inference_model(model, [])
    with pytest.raises(FileNotFoundError, match='checkpoint'):
        init_model(config, str(tmp_path / 'none.pth'))


def test_checkpoint_with_missing_keys_names_them(trained, tmp_path):
    config, _, model = trained
    state = model.state_dict()
    state.pop('head.layers.head_dist.weight')
    state['backbone.extra'] = torch.zeros(1)
    torch.save({'state_dict': state}, tmp_path / 'partial.pth')
    with pytest.raises(RuntimeError, match=r'head\.layers\.head_dist\.weight') as err:
        init_model(config, str(tmp_path / 'partial.pth'))
    assert 'backbone.extra' in str(err.value)


def test_infer_tool_prints_topk(trained, tmp_path, capsys):
    from tools.infer import main

    config, ckpt, _ = trained
    main([_image(tmp_path / 'x.png'), config, ckpt, '--topk', '2'])
    out = capsys.readouterr().out
    assert 'top-2' in out and out.count('(class ') == 2
