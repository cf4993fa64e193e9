"""What the digits study's modules share: its factors, arms, schedule, folders and result files.

The study (``tools/digits_study.py``), its SimMIM pretraining (``tools/digits_study_pretrain.py``)
and its report (``tools/digits_study_report.py``) all import from here, and this module imports
none of them, so the imports go one way only: ``digits_study`` imports ``digits_study_pretrain``,
``digits_study_report`` and this module; those two import this module only.
"""

import json
import math
import os
import os.path as osp
import time
from typing import Dict, Optional, Tuple

CONFIG_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs')
#: (arm, config under configs/) in run order: the teacher first, the students need its checkpoint.
ARMS = (
    ('teacher', 'digits/resnet-digits_1xb64_digits'),
    ('none', 'digits/deit-digits-tiny_1xb64_digits'),
    ('hard', 'digits/deit-digits-tiny-distilled-hard_1xb64_digits'),
    ('soft', 'digits/deit-digits-tiny-distilled-soft_1xb64_digits'),
    ('none-simmim', 'simmim/benchmarks/deit-digits-tiny_simmim-pre_1xb64_digits'),
    ('hard-simmim', 'simmim/benchmarks/deit-digits-tiny-distilled-hard_simmim-pre_1xb64_digits'),
)
#: The arms of the distillation study (the SimMIM arms are asked for by name).
STUDY_ARMS = ('teacher', 'none', 'hard', 'soft')
#: The SimMIM arms and the from-scratch arm each is paired with.
SIMMIM_ARMS = {'none-simmim': 'none', 'hard-simmim': 'hard'}
PRETRAIN_EPOCHS = 100  # the shipped SimMIM digits config's
SIZES = (0.1, 0.25, 1.0)
AUGS = ('mild', 'strong')
SEEDS = (0, 1, 2, 3, 4)
#: Optimisation steps of every student run, whatever the size (the demo's recipe: 1,380), and
#: of every teacher run; warm-up is WARMUP of the run, then cosine decay, as the recipe.
STUDENT_STEPS = 690
TEACHER_STEPS = 345
WARMUP = 5 / 60
BATCH = 64
TRAIN_IMAGES = 1437  # the digits train split (DigitsDataset defaults)

#: The DeiT-like strong augmentation (the ImageNet recipe's, without flips, for 16x16 digits):
#: random resized crop with DeiT's scale range, RandAugment rand-m9-mstd0.5-inc1, random
#: erasing 0.25; Mixup/CutMix on every batch instead of half of them.
DIGITS_MEAN, DIGITS_STD = 77.85, 95.85  # the digits' pixel mean and std (0..255)


def strong_pipeline(
    img_size: int = 16, mean: float = DIGITS_MEAN, std: float = DIGITS_STD, resize: bool = True
) -> list:
    """The strong augmentation for grey images of ``img_size`` pixels.

    Args:
        img_size: The input size. Defaults to 16 (the digits' configs).
        mean: The pixel mean: RandAugment's fill (rounded) and random erasing's mean. Defaults
            to the digits'.
        std: The pixel std of random erasing's noise. Defaults to the digits'.
        resize: Resize to ``img_size`` first (the 8x8 digits' upsampling). Defaults to True.
    """
    pipeline = [
        dict(
            type='RandomResizedCrop',
            scale=img_size,
            crop_ratio_range=(0.08, 1.0),
            backend='pillow',
            interpolation='bicubic',
        ),
        dict(
            type='RandAugment',
            policies='timm_increasing',
            num_policies=2,
            total_level=10,
            magnitude_level=9,
            magnitude_std=0.5,
            hparams=dict(pad_val=[round(mean)] * 3, interpolation='bicubic'),
        ),
        dict(
            type='RandomErasing',
            erase_prob=0.25,
            mode='rand',
            min_area_ratio=0.02,
            max_area_ratio=1 / 3,
            fill_color=[mean] * 3,
            fill_std=[std] * 3,
        ),
        dict(type='PackInputs'),
    ]
    if resize:
        size = (img_size, img_size)
        pipeline.insert(
            0, dict(type='Resize', scale=size, interpolation='bicubic', backend='pillow')
        )
    return pipeline


STRONG_PIPELINE = strong_pipeline(16)
STRONG_MIX_PROBS = [0.5, 0.5]


def run_dir(work_dir: str, aug: str, size: float, seed: int, arm: str) -> str:
    """The folder of one run (``<work-dir>/<aug>/size_<size>/seed_<seed>/<arm>``)."""
    return osp.join(work_dir, aug, f'size_{size:g}', f'seed_{seed}', arm)


def schedule(cfg, epochs: int, warmup_share: float) -> None:
    """Warm-up (``warmup_share`` of the epochs, at least one) then cosine decay, by epoch."""
    if epochs == 1:  # only a warm-up (a smoke run)
        cfg.param_scheduler = cfg.param_scheduler[:1]
        cfg.param_scheduler[0].update(begin=0, end=1)
    else:
        warmup = min(max(1, round(epochs * warmup_share)), epochs - 1)
        cfg.param_scheduler[0].update(begin=0, end=warmup)
        cfg.param_scheduler[1].update(begin=warmup, end=epochs)


def epochs_for(steps: int, size: float) -> Tuple[int, int]:
    """``(epochs, images)``: whole epochs giving about ``steps`` steps on the subset."""
    images = TRAIN_IMAGES if size == 1.0 else int(size * TRAIN_IMAGES)  # as train_test_split
    iters = math.ceil(images / BATCH)
    return max(1, round(steps / iters)), images


def run_config(
    config: str,
    aug: str,
    seed: int,
    steps: int,
    work_dir: str,
    size: float = 1.0,
    img_size: int = 16,
):
    """One study run's config: a shipped config with the studies' schedule and augmentation.

    Args:
        config: The config's path under ``configs/``, without ``.py``.
        aug: 'mild' (the config's own pipeline) or 'strong' (:func:`strong_pipeline` with the
            config's pixel mean and std, and Mixup/CutMix on every batch).
        seed: The training seed (and the subset's seed).
        steps: Optimisation steps: whole epochs giving about that many (:func:`epochs_for`).
        work_dir: The run's folder.
        size: The fraction of the train split. Defaults to 1.0 (all of it).
        img_size: The input size of the strong pipeline. Defaults to 16 (the digits').
    """
    from mmengine.config import Config

    cfg = Config.fromfile(osp.join(CONFIG_DIR, config + '.py'))
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed, deterministic=False)
    epochs, _ = epochs_for(steps, size)
    cfg.train_cfg = dict(by_epoch=True, max_epochs=epochs, val_interval=epochs)
    schedule(cfg, epochs, WARMUP)
    cfg.default_hooks.checkpoint.update(interval=epochs, save_best=None, max_keep_ckpts=1)
    cfg.default_hooks.logger.interval = 50
    dataset = cfg.train_dataloader.dataset
    if size < 1.0:
        dataset.update(subset=size, subset_seed=seed)
    if aug == 'strong':  # the fill and noise of the config's own pixel statistics
        pre = cfg.model.get('data_preprocessor') or cfg.data_preprocessor
        resize = dataset.pipeline[0]['type'] == 'Resize'  # the digits' 8 -> 16 upsampling
        dataset.pipeline = strong_pipeline(img_size, pre.mean[0], pre.std[0], resize)
        cfg.model.train_cfg.probs = STRONG_MIX_PROBS
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks', []) if h.get('type') != 'EMAHook']
    return cfg


def last_val_hook():
    """A Runner hook that keeps the metrics of the run's last validation in ``.metrics``."""
    from mmengine.hooks import Hook

    class LastVal(Hook):
        priority = 'LOWEST'

        def __init__(self):
            self.metrics: Dict[str, float] = {}

        def after_val_epoch(self, runner, metrics: Optional[dict] = None) -> None:
            self.metrics = {k: float(v) for k, v in (metrics or {}).items()}

    return LastVal()


def pretrain_dir(work_dir: str, seed: int) -> str:
    """The folder of a seed's SimMIM pretraining (``<work-dir>/simmim/seed_<seed>``)."""
    return osp.join(work_dir, 'simmim', f'seed_{seed}')


def train_runner(cfg, hooks=()) -> dict:
    """Train ``cfg`` with mmengine's Runner in this process (mmdeit's engine set up, ``hooks``
    added at the lowest priority); the fields every run's ``result.json`` has."""
    from mmengine.runner import Runner

    from mmdeit.engine import setup_engine

    start = time.perf_counter()
    setup_engine()
    runner = Runner.from_cfg(cfg)
    for hook in hooks:
        runner.register_hook(hook, priority='LOWEST')
    runner.train()
    epochs = cfg.train_cfg.max_epochs
    return dict(
        images=len(runner.train_dataloader.dataset),
        epochs=epochs,
        steps=epochs * len(runner.train_dataloader),
        wall_s=time.perf_counter() - start,
        checkpoint=osp.join(cfg.work_dir, f'epoch_{epochs}.pth'),
        final_loss=float(runner.message_hub.get_scalar('train/loss').current()),
    )


def save_result(work_dir: str, result: dict) -> None:
    """Write a run's ``result`` to ``<work_dir>/result.json``."""
    with open(osp.join(work_dir, 'result.json'), 'w') as f:
        json.dump(result, f, indent=1)


def worker_output(log_path: str, redirect: bool):
    """The opened log file; with ``redirect``, this process's stdout and stderr (file
    descriptors 1 and 2, so the Runner's terminal output too) go into it."""
    log = open(log_path, 'a')
    if redirect:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    return log


def load_result(path: str) -> Optional[dict]:
    """The result in the ``result.json`` at ``path``; None if the run has not finished."""
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
