"""tools/model_converters/deit_to_mmdeit.py: safe loading, atomic writes, exit status."""

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

from mmdeit.converters import convert_checkpoint

from .conftest import timm_tiny

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / 'tools' / 'model_converters' / 'deit_to_mmdeit.py'


def _run_tool_in_process(argv):
    spec = importlib.util.spec_from_file_location('deit_to_mmdeit', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_cli_converts_and_writes_atomically(tmp_path):
    theirs = timm_tiny()
    src = tmp_path / 'deit_timm.pth'
    torch.save({'model': theirs.state_dict()}, src)
    dst = tmp_path / 'out' / 'deit_mmdeit.pth'
    result = subprocess.run(
        [sys.executable, str(TOOL), str(src), str(dst), '--img-size', '64'],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    written = torch.load(dst, map_location='cpu', weights_only=True)
    want = convert_checkpoint({'model': theirs.state_dict()}, img_size=64)
    assert written['meta']['converted_from'] == 'official'
    assert written['state_dict'].keys() == want['state_dict'].keys()
    assert all(torch.equal(written['state_dict'][k], v) for k, v in want['state_dict'].items())
    assert sorted(p.name for p in dst.parent.iterdir()) == ['deit_mmdeit.pth']  # no tmp left

    # The reverse, in process: back to timm.
    back = tmp_path / 'back.pth'
    assert _run_tool_in_process([str(dst), str(back), '--to', 'timm']) == 0
    timm_sd = torch.load(back, map_location='cpu', weights_only=True)
    assert timm_sd['pos_embed'].shape == (1, 2 + 8 * 8, 32)

    # Unknown layouts and unsafe pickles fail with status 1 and write nothing.
    odd = tmp_path / 'odd.pth'
    torch.save({'encoder.weight': torch.zeros(2)}, odd)
    assert _run_tool_in_process([str(odd), str(tmp_path / 'x.pth')]) == 1
    pickled = tmp_path / 'pickled.pth'
    torch.save({'model': theirs.state_dict(), 'args': argparse.Namespace(lr=1.0)}, pickled)
    assert _run_tool_in_process([str(pickled), str(tmp_path / 'y.pth')]) == 1
    assert not (tmp_path / 'x.pth').exists() and not (tmp_path / 'y.pth').exists()
    assert _run_tool_in_process([str(pickled), str(tmp_path / 'y.pth'), '--unsafe-load']) == 0
