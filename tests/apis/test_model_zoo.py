"""The model zoo by name: mmdeit's recipes in mmpretrain's ``ModelHub`` and ``mmdeit.get_model``.

Only the tiny recipes are built (the digits students and DeiT-Ti); no weights are downloaded.
"""

import os.path as osp

import mmpretrain
import numpy as np
import pytest
import torch
import yaml
from mmpretrain import ImageClassificationInferencer
from mmpretrain.apis.model import ModelHub

import mmdeit
from mmdeit.apis import inference_model
from mmdeit.apis.model_zoo import _ENTRIES, ZooEntry
from mmdeit.models.backbones import DistilledVisionTransformer

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DIGITS_HARD = 'deit-digits-tiny-distilled-hard_1xb64_digits'
DIGITS_NONE = 'deit-digits-tiny_1xb64_digits'
TINY_DISTILLED = 'deit-tiny-distilled_8xb128_in1k'


def _metafile_names() -> set:
    with open(osp.join(REPO, 'model-index.yml')) as f:
        imports = yaml.safe_load(f)['Import']
    names = set()
    for path in imports:
        with open(osp.join(REPO, path)) as f:
            names |= {model['Name'] for model in yaml.safe_load(f)['Models']}
    return names


def _image(size=(20, 24)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (*size, 3), np.uint8)


def test_list_models_finds_mmdeit_names_through_both_apis():
    names = _metafile_names()
    assert {'deit-small-distilled_8xb128_in1k', DIGITS_HARD} <= names
    assert set(mmdeit.list_models()) == names
    listed = mmpretrain.list_models('*deit*')
    assert {n for n in names if 'deit' in n} <= set(listed)
    assert 'deit-small_4xb256_in1k' in listed  # mmpretrain's own DeiT models stay
    assert mmdeit.list_models('deit-small') == [
        'deit-small-distilled_8xb128_in1k',
        'deit-small_8xb128_in1k',
    ]
    assert mmdeit.list_models('*distilled-soft') == ['deit-digits-tiny-distilled-soft_1xb64_digits']
    assert mmdeit.list_models('nothing-like-this') == []


def test_names_are_mmdeits_own_entries_and_registration_reads_no_config():
    mmpretrain.list_models()  # mmpretrain's own model index, registered after mmdeit's
    mmpretrain_names = {k for k, v in ModelHub._models_dict.items() if not isinstance(v, ZooEntry)}
    assert len(mmpretrain_names) > 100 and not mmpretrain_names & set(mmdeit.list_models())
    for name in mmdeit.list_models():
        entry = ModelHub._models_dict[name]
        assert entry is _ENTRIES[name] and entry.package == 'mmdeit'  # not overwritten
        assert not entry.weights  # mmdeit ships no weights (nothing to download)
        # still the path: import mmdeit read no config, and get_model reads copies
        assert isinstance(entry.data['Config'], str) and osp.isfile(entry.config_path)
        assert entry.config_path.endswith(f'{name}.py')


def test_mmpretrain_get_model_builds_the_student_without_its_teacher():
    # The recipe's teacher checkpoint (checkpoints/regnety_160-...) does not exist here.
    model = mmpretrain.get_model(TINY_DISTILLED)
    assert type(model).__name__ == 'ImageClassifier' and not hasattr(model, 'teacher')
    assert type(model.backbone) is DistilledVisionTransformer  # mmdeit's, not mmpretrain's
    assert not model.training and len(model._dataset_meta['classes']) == 1000
    assert model._metainfo.name == TINY_DISTILLED
    digits = mmpretrain.get_model(DIGITS_HARD, head=dict(inference_mode='cls'))
    assert digits._dataset_meta['classes'] == tuple(str(i) for i in range(10))
    assert digits.head.inference_mode == 'cls'


def test_mmdeit_get_model_builds_the_student_and_loads_a_path(tmp_path):
    model = mmdeit.get_model(TINY_DISTILLED)
    assert type(model).__name__ == 'ImageClassifier' and not hasattr(model, 'teacher')
    assert type(model.backbone) is DistilledVisionTransformer and not model.training
    assert model._metainfo.name == TINY_DISTILLED and model._config is model.cfg
    state = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ckpt = tmp_path / 'student.pth'
    classes = [f'c{i}' for i in range(1000)]
    torch.save({'meta': {'dataset_meta': {'classes': classes}}, 'state_dict': state}, ckpt)

    for loaded in (
        mmdeit.get_model(TINY_DISTILLED.upper(), pretrained=ckpt),  # a Path, any case
        mmpretrain.get_model(TINY_DISTILLED, pretrained=str(ckpt)),
    ):
        for key, value in loaded.state_dict().items():
            torch.testing.assert_close(value, state[key], msg=key)
        assert list(loaded._dataset_meta['classes']) == classes


def test_get_model_overrides_the_model_config():
    model = mmdeit.get_model(DIGITS_HARD, head=dict(inference_mode='cls', num_classes=5))
    assert model.head.inference_mode == 'cls' and model.head.num_classes == 5
    assert model.cfg.model.head.num_classes == 5


def test_an_unknown_name_is_an_error_that_names_it():
    with pytest.raises(ValueError, match=r"unknown mmdeit model 'deit-smal_8xb128_in1k'") as err:
        mmdeit.get_model('deit-smal_8xb128_in1k')
    assert 'close matches: deit-small_8xb128_in1k' in str(err.value)
    assert 'mmdeit.list_models()' in str(err.value)
    with pytest.raises(ValueError, match="in mmpretrain's model zoo: use mmpretrain.get_model"):
        mmdeit.get_model('deit-small_4xb256_in1k')
    with pytest.raises(ValueError, match='for a config file use mmdeit.apis.init_model'):
        mmdeit.get_model('configs/deit/deit-small_8xb128_in1k.py')
    with pytest.raises(ValueError, match='deit-smal_8xb128_in1k'):  # mmpretrain's own error
        mmpretrain.get_model('deit-smal_8xb128_in1k')


def test_pretrained_true_says_mmdeit_ships_no_weights():
    with pytest.raises(ValueError, match='mmdeit ships no trained weights') as err:
        mmdeit.get_model(TINY_DISTILLED, pretrained=True)
    assert 'python -m mmdeit convert' in str(err.value) and TINY_DISTILLED in str(err.value)
    # mmpretrain's get_model keeps its own behaviour for a model without weights.
    with pytest.warns(UserWarning, match='Unable to find pre-defined checkpoint'):
        model = mmpretrain.get_model(DIGITS_NONE, pretrained=True)
    assert type(model.backbone) is DistilledVisionTransformer


def test_mmpretrain_inferencer_with_an_mmdeit_name():
    # Default pretrained=True: mmpretrain warns that there are no weights, random ones.
    with pytest.warns(UserWarning, match='Unable to find pre-defined checkpoint'):
        inferencer = ImageClassificationInferencer(TINY_DISTILLED)
    result = inferencer(_image((40, 60)))[0]
    assert {'pred_label', 'pred_score', 'pred_scores', 'pred_class'} <= set(result)
    assert result['pred_scores'].shape == (1000,)

    digits = ImageClassificationInferencer(DIGITS_HARD, pretrained=False)(_image())[0]
    assert digits['pred_class'] in [str(i) for i in range(10)]
    by_task = mmpretrain.inference_model(DIGITS_HARD, _image(), pretrained=False)
    assert by_task['pred_scores'].shape == (10,)


def test_mmdeit_get_model_serves_both_inference_apis():
    model = mmdeit.get_model(DIGITS_NONE)
    ours = inference_model(model, _image())
    theirs = ImageClassificationInferencer(model)(_image())[0]
    assert ours['pred_label'] == theirs['pred_label'] and ours['pred_class'] == theirs['pred_class']
    np.testing.assert_allclose(ours['pred_scores'], theirs['pred_scores'], rtol=1e-5, atol=1e-6)
