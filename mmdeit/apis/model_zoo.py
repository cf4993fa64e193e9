"""mmdeit's recipes by name, in mmpretrain's model zoo and in mmdeit's own ``get_model``.

``import mmdeit`` registers the models of mmdeit's ``model-index.yml`` (``configs/deit`` and
``configs/digits``, their ``metafile.yml``) in mmpretrain's ``ModelHub``, through its public
``ModelHub.register_model_index``. From then on ``mmpretrain.list_models('*deit*')``,
``mmpretrain.get_model(NAME)``, ``mmpretrain.inference_model`` and mmpretrain's inferencers
(``ImageClassificationInferencer(NAME)``) find them; :func:`list_models` and
:func:`get_model` here do the same for mmdeit's names alone.

Names. A model's name is its config file's name (``deit-small-distilled_8xb128_in1k``), the mim
convention. They never collide with mmpretrain's own DeiT names (``deit-small_4xb256_in1k``,
``deit-small-distilled_3rdparty_in1k``, ...: other batch settings or ``3rdparty``; a test checks
the two sets are disjoint), and ``mmdeit.list_models()`` lists mmdeit's alone. In the hub an
mmdeit entry is a :class:`ZooEntry` (``entry.package == 'mmdeit'``).

What a name builds. ``ModelHub`` keeps a config *path* per model and ``mmpretrain.get_model``
builds ``config.model`` in the ``mmpretrain`` scope, which would resolve mmpretrain's own
``VisionTransformer`` and, for a distilled recipe, need the teacher's checkpoint. So the one
step beyond the public hook: each mmdeit entry becomes a :class:`ZooEntry` (``__class__`` set
after registration; a subclass of modelindex's ``Model`` with no state of its own) whose
``config`` reads, when first asked, the recipe's *inference* config: the student alone (as
:func:`mmdeit.apis.init_model` builds it), built in the ``mmdeit`` scope (``_scope_``). Nothing
is read at import; mmpretrain's own entries and code paths are untouched.

Weights. mmdeit ships none (the metafiles name no ``Weights``). ``get_model(NAME,
pretrained=True)`` here raises an error saying so and how to convert the official ones;
``mmpretrain.get_model(NAME, pretrained=True)`` keeps mmpretrain's behaviour for a model without
weights (a warning, random weights), so ``ImageClassificationInferencer(NAME)`` (whose default
is ``pretrained=True``) runs. A checkpoint given as a path is read by mmdeit's safe loader here
(strictly), by mmengine's ``load_checkpoint`` in mmpretrain's ``get_model``.
"""

import copy
import difflib
import fnmatch
import os
import os.path as osp
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmpretrain.apis.model import ModelHub
from modelindex.models.Model import Model

from mmdeit.mim import PACKAGE, PACKAGE_DIR
from mmdeit.registry import DATASETS

from .inference import _student_cfg, init_model

MIM_DIR = osp.join(PACKAGE_DIR, '.mim')
MODEL_INDEX = osp.join(MIM_DIR, 'model-index.yml')

#: mmdeit's entries of mmpretrain's ModelHub, by (lower-case) name.
_ENTRIES: Dict[str, 'ZooEntry'] = {}


def inference_config(config_path: str) -> Config:
    """A recipe's config as a model-zoo name builds it: the student alone, in scope mmdeit.

    The model is :func:`mmdeit.apis.init_model`'s (a distilled classifier loses its teacher,
    the top-level data preprocessor moves into it, no ``train_cfg``) with
    ``_scope_='mmdeit'``, so that mmpretrain's ``get_model`` (scope ``mmpretrain``) builds
    mmdeit's modules. A test dataset of mmdeit's own (``DigitsDataset``) is named
    ``mmdeit.DigitsDataset``, so that mmpretrain finds its class names.

    Args:
        config_path: The recipe's config file.

    Returns:
        The config; everything but ``model`` and the test dataset's type is the recipe's.
    """
    cfg = Config.fromfile(config_path)
    model = _student_cfg(cfg)
    model['_scope_'] = PACKAGE
    cfg.model = model
    dataset = (cfg.get('test_dataloader') or {}).get('dataset')
    dataset_type = dataset.get('type') if dataset else None
    if isinstance(dataset_type, str) and dataset_type in DATASETS.module_dict:
        dataset['type'] = f'{PACKAGE}.{dataset_type}'
    return cfg


class ZooEntry(Model):
    """An mmdeit model in mmpretrain's ``ModelHub``: its ``config`` is the inference config.

    ``config`` holds the recipe's path until it is read; then it is
    :func:`inference_config` of that path (kept in this entry). ``ModelHub.get`` and
    :func:`get_model` read it on a copy of the registered entry, which keeps the path.
    """

    package = PACKAGE

    @property
    def config(self) -> Union[str, Config, None]:
        """The inference config (read from :attr:`config_path` on first access)."""
        value = self.data.get('Config')
        if isinstance(value, str):
            value = self.data['Config'] = inference_config(value)
        return value

    @config.setter
    def config(self, value: Union[str, Config, None]) -> None:
        self.data['Config'] = value

    @property
    def config_path(self) -> Optional[str]:
        """The recipe's config file (training config, teacher included)."""
        value = self.data.get('Config')
        return value.filename if isinstance(value, Config) else value


def register_model_zoo() -> None:
    """Register mmdeit's ``model-index.yml`` in mmpretrain's ``ModelHub`` (once per process).

    Run by ``import mmdeit``; it reads the model index (YAML) and no config.
    """
    if _ENTRIES:
        return
    hub = ModelHub._models_dict
    ours = {k: v for k, v in hub.items() if getattr(v, 'package', None) == PACKAGE}
    if not ours:  # not registered by an earlier import of this module (e.g. a reload)
        before = set(hub)
        ModelHub.register_model_index(MODEL_INDEX, config_prefix=MIM_DIR)
        ours = {name: hub[name] for name in set(hub) - before}
        for entry in ours.values():
            entry.__class__ = ZooEntry
    _ENTRIES.update(ours)


def list_models(pattern: Optional[str] = None) -> List[str]:
    """mmdeit's model names, as ``mmpretrain.list_models`` matches them.

    Args:
        pattern: A wildcard pattern; a name matches if it matches ``pattern + '*'``, e.g.
            ``'deit-small'`` or ``'*distilled*'``. Defaults to None (all names).

    Returns:
        The matching names, sorted.
    """
    names = list(_ENTRIES)
    if pattern is not None:
        names = fnmatch.filter(names, pattern + '*')
    return sorted(names)


def _unknown(name: str) -> ValueError:
    message = f'unknown mmdeit model {name!r}'
    if name.endswith('.py'):
        message += ': get_model takes a model name; for a config file use mmdeit.apis.init_model'
    else:
        close = difflib.get_close_matches(name.lower(), list(_ENTRIES), n=3, cutoff=0.6)
        if close:
            message += f'; close matches: {", ".join(close)}'
        from mmpretrain.apis.model import list_models as hub_models

        if name.lower() in hub_models(name.lower()):
            message += f"; {name!r} is in mmpretrain's model zoo: use mmpretrain.get_model"
    return ValueError(f'{message}. mmdeit.list_models() lists its {len(_ENTRIES)} models.')


def _no_weights(name: str, config_path: Optional[str]) -> ValueError:
    return ValueError(
        f'get_model({name!r}, pretrained=True): mmdeit ships no trained weights (its model zoo '
        f'holds recipes only; config {config_path}). Train the recipe (python -m mmdeit train '
        'CONFIG), or convert an official DeiT checkpoint with `python -m mmdeit convert '
        'deit_small_distilled_patch16_224-649709d9.pth deit-small-distilled.pth`, and pass '
        "pretrained='deit-small-distilled.pth'; pretrained=False builds random weights."
    )


def get_model(
    name: str,
    pretrained: Union[bool, str, os.PathLike] = False,
    device: Union[str, torch.device] = 'cpu',
    **overrides,
) -> nn.Module:
    """Build one of mmdeit's models by name, for inference.

    The recipe's student alone is built (a distilled recipe needs neither its teacher nor the
    teacher's checkpoint), as :func:`mmdeit.apis.init_model` builds it, in eval mode.

    Args:
        name: A name of :func:`list_models` (case-insensitive).
        pretrained: A checkpoint path, read by mmdeit's safe loader and loaded strictly (its
            ``meta['dataset_meta']['classes']`` become the class names); False for random
            weights; True asks for the model zoo's weights, which mmdeit does not ship: an
            error that says how to convert the official ones. Defaults to False.
        device: Device to put the model on. Defaults to 'cpu'.
        **overrides: Keyword arguments of the model config, as for ``mmpretrain.get_model``,
            e.g. ``head=dict(inference_mode='cls')``.

    Returns:
        The model, with ``cfg`` and ``dataset_meta`` as from :func:`mmdeit.apis.init_model`
        (so :func:`mmdeit.apis.inference_model` takes it) and mmpretrain's ``_config``,
        ``_dataset_meta`` and ``_metainfo`` (so mmpretrain's inferencers take it).

    Raises:
        ValueError: An unknown name (with close matches), or ``pretrained=True``.
    """
    if not isinstance(name, str):
        raise TypeError(f'name must be a model name (str), got {type(name).__name__}')
    entry = _ENTRIES.get(name.lower())
    if entry is None:
        raise _unknown(name)
    if pretrained is True:
        if not entry.weights:
            raise _no_weights(name, entry.config_path)
        checkpoint = entry.weights
    elif pretrained is False or pretrained is None:
        checkpoint = None
    elif isinstance(pretrained, (str, os.PathLike)):
        checkpoint = os.fspath(pretrained)
    else:
        raise TypeError(f'pretrained must be a bool or a path, got {type(pretrained).__name__}')
    metainfo = copy.deepcopy(entry)
    cfg = metainfo.config
    if overrides:
        cfg.merge_from_dict({'model': overrides})
    model = init_model(cfg, checkpoint, device=device)
    metainfo.config = model.cfg
    model._config = model.cfg
    model._dataset_meta = model.dataset_meta
    model._metainfo = metainfo
    return model
