"""Convert a DeiT checkpoint (official, timm, HF transformers, mmpretrain) to mmdeit, or back.

Examples::

    python tools/model_converters/deit_to_mmdeit.py deit_tiny_distilled_patch16_224.pth \
        checkpoints/deit-tiny-distilled_mmdeit.pth
    python tools/model_converters/deit_to_mmdeit.py pytorch_model.bin deit_384.pth --img-size 384
    python tools/model_converters/deit_to_mmdeit.py epoch_300.pth deit_timm.pth --to timm
"""

import argparse
import io
import os
import sys

import torch
from mmengine.logging import MMLogger

from mmdeit.converters import FORMATS, HF_LAYOUTS, TARGETS, convert_checkpoint
from mmdeit.engine import UnsafeCheckpointError, atomic_write, freeze_startup_objects, safe_load


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
        help='load with weights_only=False (runs pickled code: only for files you trust, '
        "e.g. other projects' training checkpoints holding argparse.Namespace); mmengine "
        'and mmdeit checkpoints load without it',
    )
    return parser.parse_args(argv)


def load_source(path: str, unsafe: bool = False) -> dict:
    """Load a checkpoint file with mmdeit's safe loader (or ``weights_only=False`` if ``unsafe``).

    :func:`mmdeit.engine.safe_load` reads mmengine/mmpretrain training checkpoints (``meta``,
    ``message_hub``, ``optimizer``, ``ema_state_dict``) and refuses pickles that reference
    anything outside its allow-list.

    Args:
        path: A ``.pth``/``.bin`` checkpoint, or a ``.safetensors`` file.
        unsafe: Unpickle anything (runs code from the file: only for files you trust).
            Defaults to False.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: The file references objects outside the allow-list.
        RuntimeError: The file is truncated or not a checkpoint.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'source checkpoint {path!r} does not exist')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file

        return load_file(path, device='cpu')
    if unsafe:
        return torch.load(path, map_location='cpu', weights_only=False)
    try:
        return safe_load(path, map_location='cpu')
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(
            f'{err} If you trust the file, rerun with --unsafe-load.'
        ) from None


def save_atomic(obj: dict, path: str) -> None:
    """Write ``obj`` to ``path`` with :func:`mmdeit.engine.atomic_write` (temp file + rename).

    Args:
        obj: The converted checkpoint; a flat state dict when ``path`` ends in ``.safetensors``.
        path: The target file; its folder is created if needed.
    """
    if str(path).endswith('.safetensors'):
        from safetensors.torch import save

        data = save({k: v.contiguous() for k, v in obj.items()})
    else:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = buffer.getvalue()
    atomic_write(data, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    logger = MMLogger.get_instance('deit_to_mmdeit', log_level='INFO')
    try:
        checkpoint = load_source(args.src, args.unsafe_load)
        converted = convert_checkpoint(
            checkpoint, to=args.to, img_size=args.img_size, fmt=args.fmt, hf_layout=args.hf_layout
        )
    except (
        FileNotFoundError,
        UnsafeCheckpointError,
        RuntimeError,
        ValueError,
        TypeError,
        KeyError,
    ) as err:
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
    freeze_startup_objects()  # the imports' objects: no collector passes over them
    sys.exit(main())
