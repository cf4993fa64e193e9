"""The data-pipeline tools run as a user runs them: the per-stage profile (each route) and the
benchmark as subprocesses on a few generated JPEGs, and the end-to-end tool's pieces (its
dataset layout, its user config, its reading of mmengine's log)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from tools.analysis import pipeline_train

TOOLS = Path(__file__).resolve().parents[2] / 'tools' / 'analysis'


@pytest.mark.parametrize('route', [None, 'reference', 'exact', 'fast'])
def test_profile_lists_every_stage(tmp_path, route):
    args = [sys.executable, str(TOOLS / 'pipeline_profile.py'), '--count', '6']
    out = subprocess.run(args + (['--route', route] if route else []), cwd=tmp_path, text=True,
                         capture_output=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    for stage in ('TrainPipeline', 'RandomFlip.horizontal', 'RandAugment', 'RandomErasing',
                  'PackInputs', '(whole pipeline)'):  # fmt: skip
        assert stage in text, (stage, text)
    rows = {line.split()[0]: line.split()[1] for line in text.splitlines() if line.strip()}
    if route != 'fast':  # the fast route fuses them into TrainPipeline's own row
        assert rows['RandomResizedCrop'] == rows['LoadImageFromFile'] == '6', text


def test_benchmark_reports_every_route(tmp_path):
    args = [sys.executable, str(TOOLS / 'pipeline_benchmark.py'), '--count', '4', '--rounds', '1',
            '--no-peers', '--out', 'report.json']  # fmt: skip
    out = subprocess.run(args, cwd=tmp_path, text=True, capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / 'report.json').read_text())
    assert set(report['pipelines']) == {'mmdeit reference', 'mmdeit exact', 'mmdeit fast'}


def test_train_tool_dataset_and_config(tmp_path):
    root = tmp_path / 'data'
    pipeline_train.write_dataset(str(root), 6, classes=2)
    lines = (root / 'meta' / 'train.txt').read_text().split('\n')[:-1]
    assert len(lines) == 6 and all((root / 'train' / ln.split()[0]).is_file() for ln in lines)
    path = pipeline_train.user_config(str(tmp_path), str(root), 4, 2, tiny=True)
    text = Path(path).read_text()
    assert text.startswith("_base_ = 'mmdeit::deit/deit-small_8xb128_in1k.py'")
    body = Config.fromstring(text.split('\n', 1)[1], '.py')  # the user's own part
    assert body.train_dataloader.batch_size == 4 and body.model.backbone.arch.num_layers == 2


def test_train_tool_reads_mmengine_log(tmp_path):
    log = tmp_path / '20261203_000000' / 'vis_data'
    log.mkdir(parents=True)
    records = [dict(lr=0.1, data_time=0.5, time=1.0, iter=1), dict(data_time=0.1, time=0.5)]
    (log / '20261203_000000.json').write_text('\n'.join(json.dumps(r) for r in records) + '\n')
    (log / 'scalars.json').write_text('{"data_time": 9, "time": 9}\n')  # not the one it reads
    assert pipeline_train.read_scalars(str(tmp_path)) == records
    with pytest.raises(RuntimeError, match='no mmengine log'):
        pipeline_train.read_scalars(str(tmp_path / 'nothing'))
