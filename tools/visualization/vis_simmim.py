"""Draw masked inputs and their SimMIM reconstructions as one PNG.

For a ``DeiTSimMIM`` config and checkpoint it takes the first ``--num`` images of the config's
training data set (``--split``, 'val' by default: images the pretraining did not see, where the
data set has splits), draws a mask with the config's ``SimMIMMaskGenerator`` (``--seed``) and
writes one row per image: the input, the masked input (masked patches grey), the decoder's
reconstruction and the input with the masked patches replaced by the reconstruction. The random
augmentations of the training pipeline are left out (``RandomResizedCrop`` becomes a resize).
Example::

    python tools/visualization/vis_simmim.py \
        configs/simmim/simmim_deit-digits-tiny_1xb64_digits.py \
        work_dirs/simmim_deit-digits-tiny_1xb64_digits/epoch_100.pth --out docs/simmim_digits.png
"""

import argparse
import copy
import sys
from pathlib import Path
from typing import List

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope

#: Random transforms of a training pipeline that the picture leaves out.
RANDOM_TRANSFORMS = ('RandomCrop', 'RandomFlip', 'Rotate', 'RandAugment', 'RandomErasing')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Masked inputs and SimMIM reconstructions.')
    parser.add_argument('config', help='DeiTSimMIM config file')
    parser.add_argument('checkpoint', help='checkpoint of that config (loaded strictly)')
    parser.add_argument('--out', required=True, help='path of the PNG to write')
    parser.add_argument('--num', type=int, default=6, help='number of images (default: 6)')
    parser.add_argument('--split', default='val', help="data set split (default: 'val')")
    parser.add_argument('--seed', type=int, default=0, help='seed of the masks (default: 0)')
    parser.add_argument(
        '--panel-size', type=int, default=96, help='side of each panel in pixels (default: 96)'
    )
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error(f'--num must be at least 1, got {args.num}')
    return args


def picture_pipeline(pipeline: List[dict]) -> List[dict]:
    """The training pipeline without its random augmentations (a random crop is a resize)."""
    out = []
    for transform in copy.deepcopy(pipeline):
        kind = transform['type']
        if kind == 'RandomResizedCrop':
            size = transform['scale']
            out.append(dict(type='Resize', scale=(size, size) if isinstance(size, int) else size))
        elif kind not in RANDOM_TRANSFORMS:
            out.append(transform)
    if not any(t['type'] == 'SimMIMMaskGenerator' for t in out):
        raise ValueError('the config has no SimMIMMaskGenerator in its train pipeline')
    return out


def to_image(tensor: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, size: int):
    """Normalised (3, H, W) -> (size, size, 3) uint8, nearest-neighbour enlarged."""
    img = (tensor * std + mean).clamp(0, 255).round().byte().permute(1, 2, 0).numpy()  # (H, W, 3)
    h, w = img.shape[:2]
    rows = np.arange(size) * h // size
    cols = np.arange(size) * w // size
    return np.ascontiguousarray(img[rows][:, cols])  # (size, size, 3)


@torch.no_grad()
def draw(cfg: Config, checkpoint: str, args: argparse.Namespace) -> List[list]:
    """The rows of panels: (title, image) for input, masked, reconstruction, pasted."""
    from mmengine.dataset import Compose, pseudo_collate
    from mmengine.runner import load_checkpoint

    from mmdeit.engine import setup_engine
    from mmdeit.registry import DATASETS, MODELS, TRANSFORMS

    setup_engine()
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmdeit')):
        model_cfg = copy.deepcopy(cfg.model)
        model_cfg.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
        model = MODELS.build(model_cfg).eval()
        if not hasattr(model, 'reconstruct'):
            raise TypeError(f'{type(model).__name__} is not a DeiTSimMIM (no reconstruct)')
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True, logger='silent')
        dataset_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
        if 'split' in dataset_cfg:
            dataset_cfg.split = args.split
        dataset_cfg.pipeline = []
        dataset = DATASETS.build(dataset_cfg)
        pipeline = Compose([TRANSFORMS.build(t) for t in picture_pipeline(cfg.train_pipeline)])
    np.random.seed(args.seed)  # SimMIMMaskGenerator draws from numpy
    items = [pipeline(dataset[i]) for i in range(min(args.num, len(dataset)))]
    batch = model.data_preprocessor(pseudo_collate(items), False)
    inputs = batch['inputs']  # (B, 3, H, W), normalised
    mask = torch.stack([sample.mask for sample in batch['data_samples']]).bool()  # (B, h, w)
    rec = model.reconstruct(inputs, mask)  # (B, 3, H, W)
    patch = inputs.shape[-1] // mask.shape[-1]
    pixels = mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None]  # (B,1,H,W)
    mean = model.data_preprocessor.mean.cpu()  # (3, 1, 1)
    std = model.data_preprocessor.std.cpu()
    grey = (128 - mean) / std  # mid-grey in the normalised space, (3, 1, 1)
    masked = torch.where(pixels, grey, inputs)
    pasted = torch.where(pixels, rec, inputs)
    size = args.panel_size
    rows = []
    for i in range(len(items)):
        rows.append(
            [
                ('input', to_image(inputs[i], mean, std, size)),
                (f'masked {mask[i].float().mean():.0%}', to_image(masked[i], mean, std, size)),
                ('reconstruction', to_image(rec[i], mean, std, size)),
                ('visible + rec.', to_image(pasted[i], mean, std, size)),
            ]
        )
    return rows


def main(argv=None) -> int:
    import mmdeit  # noqa: F401  (registers modules, mmdeit:: configs)
    from mmdeit.apis import checkpoint_path, load_config
    from mmdeit.visualization import save_panel_grid

    args = parse_args(argv)
    logger = MMLogger.get_instance('vis_simmim', log_level='INFO')
    try:  # a missing or swapped CONFIG/CHECKPOINT: the message, not a traceback
        cfg, checkpoint = load_config(args.config), checkpoint_path(args.checkpoint)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'vis_simmim: {err}')
    rows = draw(cfg, checkpoint, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    width, height = save_panel_grid(rows, str(out))
    logger.info(f'wrote {out} ({width}x{height} px, {len(rows)} images)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
