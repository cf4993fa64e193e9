"""Draw what the cls and dist tokens attend to, overlaid on the input image.

For every image it writes ``DIR/<image stem>_attention.png``: one row per token (cls, then dist
for a distilled model) holding the preprocessed input, the attention rollout over all layers
and the attention of each head of the chosen layer (the last by default). Example::

    python tools/visualization/vis_attention.py digit.png \
        configs/digits/deit-digits-tiny-distilled-hard_1xb64_digits.py \
        work_dirs/deit-digits-tiny-distilled-hard_1xb64_digits/epoch_60.pth --out work_dirs/att
"""

import argparse
import sys
from pathlib import Path
from typing import List

import numpy as np
import torch
from mmengine.logging import MMLogger

from mmdeit.apis import init_model
from mmdeit.engine import freeze_startup_objects
from mmdeit.visualization import attention_panels, resize_image, save_panel_grid

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Attention maps of the cls and dist tokens.')
    parser.add_argument('img', help='an image file or a folder of images')
    parser.add_argument('config', help='model config file, or mmdeit::path of a shipped one')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', required=True, help='output folder for the PNGs')
    parser.add_argument('--device', default='cpu', help='device, e.g. cpu or cuda:0')
    parser.add_argument(
        '--layer',
        type=int,
        default=-1,
        help='layer whose per-head maps are drawn (default: -1, the last)',
    )
    parser.add_argument(
        '--head-fusion',
        choices=('mean', 'max', 'min'),
        default='mean',
        help='how heads are combined in the rollout (default: mean)',
    )
    parser.add_argument('--alpha', type=float, default=0.5, help='overlay weight (default 0.5)')
    parser.add_argument(
        '--panel-size', type=int, default=224, help='side of each panel in pixels (default: 224)'
    )
    return parser.parse_args(argv)


def build_model(config: str, checkpoint: str, device: str) -> torch.nn.Module:
    """The classifier of ``config`` with ``checkpoint`` loaded, in eval mode (the student
    alone for a distilled config, as :func:`mmdeit.apis.init_model` builds it)."""
    return init_model(config, checkpoint, device=device).eval()


def build_pipeline(cfg):
    """The config's test pipeline, loading the image from its file first."""
    from mmengine.dataset import Compose

    from mmdeit.apis import test_pipeline_cfg
    from mmdeit.registry import TRANSFORMS

    return Compose([TRANSFORMS.build(t) for t in test_pipeline_cfg(cfg, from_file=True)])


def list_images(path: str) -> List[Path]:
    root = Path(path)
    if root.is_file():
        return [root]
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return files
    raise FileNotFoundError(f'{path!r} is neither an image nor a folder with images')


@torch.no_grad()
def visualize(model, pipeline, image_path: Path, out_dir: Path, args) -> Path:
    """Run one image through the model and save its attention PNG; returns its path."""
    from mmengine.dataset import pseudo_collate

    backbone = model.backbone
    if not hasattr(backbone, 'forward_with_details'):
        raise TypeError(
            f'{type(backbone).__name__} has no forward_with_details; use an mmdeit '
            f'backbone such as DistilledVisionTransformer'
        )
    data = pipeline(dict(img_path=str(image_path)))
    batch = model.data_preprocessor(pseudo_collate([data]), False)
    details = backbone.forward_with_details(batch['inputs'])
    shown = data['inputs'].permute(1, 2, 0).numpy()[..., ::-1]  # (H, W, 3) BGR -> RGB
    shown = resize_image(np.ascontiguousarray(shown), (args.panel_size, args.panel_size))
    names = {'cls_token': 'cls', 'dist_token': 'dist'}
    tokens = {names.get(n, n): i for i, n in enumerate(backbone.extra_tokens)}
    rows = attention_panels(
        shown,
        details['attentions'],
        details['patch_resolution'],
        tokens,
        backbone.num_extra_tokens,
        layer=args.layer,
        head_fusion=args.head_fusion,
        alpha=args.alpha,
    )
    out_file = out_dir / f'{image_path.stem}_attention.png'
    save_panel_grid(rows, str(out_file))
    return out_file


def main(argv=None) -> int:
    args = parse_args(argv)
    logger = MMLogger.get_instance('vis_attention', log_level='INFO')
    try:
        images = list_images(args.img)  # before the model is loaded, which takes a while
        model = build_model(args.config, args.checkpoint, args.device)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'mmdeit vis_attention: {err}')
    pipeline = build_pipeline(model.cfg)  # init_model's config
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for image_path in images:
        logger.info(f'wrote {visualize(model, pipeline, image_path, out_dir, args)}')
    return 0


if __name__ == '__main__':
    freeze_startup_objects()  # the imports' objects: no collector passes over them
    sys.exit(main())
