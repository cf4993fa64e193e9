"""tools/analysis/onnx_speed.py on the DeiT-Ti recipe at batch 1: the report's fields, and the
export computing PyTorch's logits. Not a timed test: nothing here compares speeds."""

import json

import pytest

from tools.analysis import onnx_speed

from ..deployment.conftest import TINY, config_path


def test_report_fields_and_agreement(tmp_path, capsys):
    out = tmp_path / 'speed.json'
    argv = ['--config', config_path(TINY), '--batch', '1', '--threads', '1']
    result = onnx_speed.main([*argv, '--rounds', '1', '--calls', '1', '--out', str(out)])
    assert json.loads(out.read_text()) == result
    assert set(result['images_per_s']) == {'mmdeit eager (fast_path)', 'onnxruntime'}
    assert all(rate > 0 for rate in result['images_per_s'].values())
    assert result['logits_max_abs_diff'] < 1e-4
    assert (result['batch'], result['input_size'], result['threads']) == (1, [224, 224], 1)
    assert 'mmdeit / onnxruntime' in capsys.readouterr().out


@pytest.mark.parametrize('flag', ['--batch', '--threads', '--rounds', '--calls'])
def test_counts_below_one_are_refused_naming_the_flag(flag, capsys):
    with pytest.raises(SystemExit):
        onnx_speed.parse_args([flag, '0'])
    assert f'{flag[2:]} must be >= 1, got 0' in capsys.readouterr().err
