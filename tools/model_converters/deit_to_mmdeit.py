"""Convert a DeiT checkpoint (official, timm, HF transformers, mmpretrain) to mmdeit, or back.

Examples::

    python tools/model_converters/deit_to_mmdeit.py deit_tiny_distilled_patch16_224.pth \
        checkpoints/deit-tiny-distilled_mmdeit.pth
    python tools/model_converters/deit_to_mmdeit.py pytorch_model.bin deit_384.pth --img-size 384
    python tools/model_converters/deit_to_mmdeit.py epoch_300.pth deit_timm.pth --to timm
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from mmengine.logging import MMLogger

from mmdeit.models.utils.checkpoint_convert import FORMATS, TARGETS, convert_checkpoint
from mmdeit.models.utils.hf_checkpoint_convert import HF_LAYOUTS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert DeiT checkpoints between the official, timm, HF transformers, '
        'mmpretrain and mmdeit layouts.'
    )
    parser.add_argument('src', help='source checkpoint (.pth/.bin, or .safetensors)')
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument(
        '--to',
        choices=TARGETS,
        default='mmdeit',
        help='target layout (default: mmdeit, a full classifier checkpoint)',
    )
    parser.add_argument(
        '--from',
        dest='fmt',
        choices=FORMATS,
        default=None,
        help='source layout (default: detected from the keys)',
    )
    parser.add_argument(
        '--img-size',
        type=int,
        default=None,
        help='resize the position embedding to this input size, e.g. 384',
    )
    parser.add_argument(
        '--hf-layout',
        choices=HF_LAYOUTS,
        default='legacy',
        help='key names for --to hf: legacy (transformers 4 and the Hub files, '
        'the default) or v5 (transformers >= 5 modules)',
    )
    parser.add_argument(
        '--unsafe-load',
        action='store_true',
        help='load with weights_only=False (runs pickled code: only for files '
        'you trust, e.g. training checkpoints holding argparse.Namespace)',
    )
    return parser.parse_args(argv)


def load_source(path: str, unsafe: bool = False) -> dict:
    """Load a checkpoint file; ``weights_only=True`` unless ``unsafe``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'source checkpoint {path!r} does not exist')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file

        return load_file(path, device='cpu')
    try:
        return torch.load(path, map_location='cpu', weights_only=not unsafe)
    except Exception as err:  # torch raises UnpicklingError or RuntimeError here
        if unsafe:
            raise
        raise RuntimeError(
            f'could not load {path!r} with weights_only=True ({err}). If you trust '
            'the file, rerun with --unsafe-load.'
        ) from err


def save_atomic(obj, path: str) -> None:
    """Write ``obj`` to ``path`` through a temporary file in the same folder + ``os.replace``."""
    dst = Path(path).resolve()
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{dst.name}.', suffix='.tmp', dir=dst.parent)
    os.close(fd)
    try:
        if dst.suffix == '.safetensors':
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in obj.items()}, tmp)
        else:
            torch.save(obj, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def main(argv=None) -> int:
    args = parse_args(argv)
    logger = MMLogger.get_instance('deit_to_mmdeit', log_level='INFO')
    try:
        checkpoint = load_source(args.src, args.unsafe_load)
        converted = convert_checkpoint(
            checkpoint, to=args.to, img_size=args.img_size, fmt=args.fmt, hf_layout=args.hf_layout
        )
    except (FileNotFoundError, RuntimeError, ValueError, TypeError, KeyError) as err:
        logger.error(f'cannot convert {args.src}: {err}')
        return 1
    save_atomic(converted, args.dst)
    state_dict = converted.get('state_dict', converted.get('model', converted))
    logger.info(f'wrote {args.to} checkpoint with {len(state_dict)} tensors to {args.dst}')
    if args.to == 'mmdeit':
        meta = converted['meta']
        logger.info(
            f'source format {meta["converted_from"]}; distilled={meta["distilled"]}, '
            f'arch={meta["arch"]} (num_heads assumes 64-dim heads), '
            f'patch_size={meta["patch_size"]}, img_size={meta["img_size"]}, '
            f'num_classes={meta["num_classes"]}'
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
