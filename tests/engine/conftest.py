"""Engine test fixtures: mmengine as mmdeit's tools set it up, or as mmengine ships it."""

import socket
from collections import OrderedDict
from typing import Callable

import pytest
import torch.distributed as torch_dist
from mmengine.fileio import LocalBackend
from mmengine.fileio import io as fileio_io
from mmengine.fileio.backends import registry_utils
from mmengine.runner.checkpoint import CheckpointLoader, load_from_local

from mmdeit.engine import engine_is_set_up, setup_engine


@pytest.fixture
def engine() -> None:
    """The safe checkpoint loader and atomic writes on, as mmdeit's tools turn them on."""
    setup_engine()
    assert engine_is_set_up()


@pytest.fixture
def stock_mmengine(monkeypatch) -> Callable[[], None]:
    """mmengine's own local checkpoint loader and file backend during the test, whatever an
    earlier test turned on; the state before the test comes back afterwards.

    Returns:
        A function that restores the stock state again (after something turned the engine on).
    """

    def restore() -> None:
        schemes = OrderedDict(CheckpointLoader._schemes)
        schemes[''] = load_from_local
        monkeypatch.setattr(CheckpointLoader, '_schemes', schemes)
        # mmengine.fileio.io holds the same dicts: change them in place.
        monkeypatch.setitem(registry_utils.backends, 'local', LocalBackend)
        monkeypatch.setitem(registry_utils.prefix_to_backends, '', LocalBackend)
        monkeypatch.setattr(fileio_io, 'backend_instances', {})
        assert not engine_is_set_up()

    restore()
    return restore


@pytest.fixture
def torchrun_env(monkeypatch):
    """The environment torchrun gives a single process; the process group is destroyed after."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    for key, value in dict(
        RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port)
    ).items():
        monkeypatch.setenv(key, value)
    yield
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
