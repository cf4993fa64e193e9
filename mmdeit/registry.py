"""Registries of the ``mmdeit`` scope.

Every registry here is a child of mmpretrain's registry of the same kind, so a config with
``default_scope='mmdeit'`` resolves mmdeit's own modules first and falls back to mmpretrain's
(``ImageClassifier``, datasets, transforms, metrics, ...). Modules are registered here, never
into mmpretrain's registries: mmpretrain has its own ``DistilledVisionTransformer``.

From another scope (an mmdet or mmseg config) use ``type='mmdeit.DistilledVisionTransformer'``
after ``custom_imports=dict(imports=['mmdeit'], allow_failed_imports=False)``.
"""

from mmengine.registry import Registry
from mmpretrain import registry as mmpretrain_registry

__all__ = [
    'RUNNERS',
    'RUNNER_CONSTRUCTORS',
    'LOOPS',
    'HOOKS',
    'LOG_PROCESSORS',
    'OPTIMIZERS',
    'OPTIM_WRAPPERS',
    'OPTIM_WRAPPER_CONSTRUCTORS',
    'PARAM_SCHEDULERS',
    'DATASETS',
    'DATA_SAMPLERS',
    'TRANSFORMS',
    'MODELS',
    'MODEL_WRAPPERS',
    'WEIGHT_INITIALIZERS',
    'BATCH_AUGMENTS',
    'TASK_UTILS',
    'METRICS',
    'EVALUATORS',
    'VISUALIZERS',
    'VISBACKENDS',
]


# Importing ``mmdeit`` registers every module of the package.
_LOCATIONS = ['mmdeit']


def _child(name: str, parent: Registry, locations: list) -> Registry:
    # The parent's locations too: a child registry does not trigger its parent's lazy imports,
    # and mmpretrain's modules (UniversalVisualizer, ...) must resolve from scope mmdeit.
    registry = Registry(
        name, parent=parent, scope='mmdeit', locations=locations + list(parent._locations)
    )
    # mmengine resolves 'mmdeit.X' from another scope (mmdet, mmseg) only through the root
    # registry's direct children, and ours hangs below mmpretrain's: link it to the root too.
    root = registry._get_root_registry()
    if 'mmdeit' not in root.children:
        root._add_child(registry)
    return registry


_p = mmpretrain_registry
RUNNERS = _child('runner', _p.RUNNERS, _LOCATIONS)
RUNNER_CONSTRUCTORS = _child('runner constructor', _p.RUNNER_CONSTRUCTORS, _LOCATIONS)
LOOPS = _child('loop', _p.LOOPS, _LOCATIONS)
HOOKS = _child('hook', _p.HOOKS, _LOCATIONS)
LOG_PROCESSORS = _child('log processor', _p.LOG_PROCESSORS, _LOCATIONS)
OPTIMIZERS = _child('optimizer', _p.OPTIMIZERS, _LOCATIONS)
OPTIM_WRAPPERS = _child('optim_wrapper', _p.OPTIM_WRAPPERS, _LOCATIONS)
OPTIM_WRAPPER_CONSTRUCTORS = _child(
    'optimizer wrapper constructor', _p.OPTIM_WRAPPER_CONSTRUCTORS, _LOCATIONS
)
PARAM_SCHEDULERS = _child('parameter scheduler', _p.PARAM_SCHEDULERS, _LOCATIONS)
DATASETS = _child('dataset', _p.DATASETS, _LOCATIONS)
DATA_SAMPLERS = _child('data sampler', _p.DATA_SAMPLERS, _LOCATIONS)
TRANSFORMS = _child('transform', _p.TRANSFORMS, _LOCATIONS)
MODELS = _child('model', _p.MODELS, _LOCATIONS)
MODEL_WRAPPERS = _child('model_wrapper', _p.MODEL_WRAPPERS, _LOCATIONS)
WEIGHT_INITIALIZERS = _child('weight initializer', _p.WEIGHT_INITIALIZERS, _LOCATIONS)
BATCH_AUGMENTS = _child('batch augment', _p.BATCH_AUGMENTS, _LOCATIONS)
TASK_UTILS = _child('task util', _p.TASK_UTILS, _LOCATIONS)
METRICS = _child('metric', _p.METRICS, _LOCATIONS)
EVALUATORS = _child('evaluator', _p.EVALUATORS, _LOCATIONS)
VISUALIZERS = _child('visualizer', _p.VISUALIZERS, _LOCATIONS)
VISBACKENDS = _child('vis_backend', _p.VISBACKENDS, _LOCATIONS)
