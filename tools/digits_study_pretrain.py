"""The SimMIM pretraining of the digits study's ``*-simmim`` arms (``tools/digits_study.py``).

Once per seed, before the study's cells: the shipped SimMIM digits config
(``configs/simmim/simmim_deit-digits-tiny_1xb64_digits.py``) on the whole 1,437-image train split,
labels unused, in ``<work-dir>/simmim/seed_<seed>/`` with its ``result.json`` (the checkpoint the
seed's fine-tunes start from, the final L1 loss). A seed whose ``result.json`` exists is not
pretrained again.
"""

import argparse
import os
import os.path as osp

from tools import digits_study_common as study

PRETRAIN_CONFIG = 'simmim/simmim_deit-digits-tiny_1xb64_digits'


def pretrain_config(seed: int, epochs: int, work_dir: str):
    """The SimMIM pretraining of one seed: the shipped digits config, its warm-up share kept."""
    from mmengine.config import Config

    cfg = Config.fromfile(osp.join(study.CONFIG_DIR, PRETRAIN_CONFIG + '.py'))
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed, deterministic=False)
    shipped_warmup = cfg.param_scheduler[0].end / cfg.train_cfg.max_epochs
    cfg.train_cfg = dict(by_epoch=True, max_epochs=epochs)
    study.schedule(cfg, epochs, shipped_warmup)
    cfg.default_hooks.checkpoint.update(interval=epochs, max_keep_ckpts=1)
    cfg.default_hooks.logger.interval = 50
    return cfg


def pretrain_one(seed: int, args: argparse.Namespace, redirect: bool = True) -> dict:
    """SimMIM-pretrain the seed's encoder in this process (once); its result.

    Args:
        seed: The seed of the pretraining (and of the fine-tunes that start from it).
        args: The study's arguments.
        redirect: Send stdout and stderr to the run's ``pretrain.log``. Defaults to True.
    """
    work_dir = study.pretrain_dir(args.work_dir, seed)
    result = study.load_result(osp.join(work_dir, 'result.json'))
    if result is not None:
        return dict(result, reused=True)
    import torch

    import mmdeit  # noqa: F401  (registers modules)

    os.makedirs(work_dir, exist_ok=True)
    torch.set_num_threads(1)
    with study.worker_output(osp.join(work_dir, 'pretrain.log'), redirect):
        fields = study.train_runner(pretrain_config(seed, args.pretrain_epochs, work_dir))
    result = dict(arm='simmim', seed=seed, **fields)
    study.save_result(work_dir, result)
    return dict(result, reused=False)


def pretrain_payload(payload) -> dict:
    """``pretrain_one(*payload)``, for a process pool."""
    return pretrain_one(*payload)
