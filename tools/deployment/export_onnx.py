"""Export a trained classifier to ONNX: ``python -m mmdeit export CONFIG CKPT model.onnx``.

The student as deployed (no teacher), the fused head by default, a dynamic batch axis,
softmax probabilities out (``--logits`` for the logits); see ``docs/deployment.md``::

    python tools/deployment/export_onnx.py configs/deit/deit-small-distilled_8xb128_in1k.py \
        epoch_300.pth deit-small-distilled.onnx
    python -m mmdeit export my_config.py epoch_30.pth cls_head.onnx --head cls
"""

import argparse
import sys

from mmengine.config import DictAction

from mmdeit.apis import load_config
from mmdeit.deployment import DEFAULT_OPSET, HEADS, export_onnx
from mmdeit.engine import freeze_startup_objects


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export an mmdeit classifier to ONNX')
    parser.add_argument('config', help='config file, or mmdeit::path of a shipped one')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('output', help='the .onnx file to write')
    parser.add_argument(
        '--head',
        default=None,
        help=f"which head predicts: {', '.join(HEADS)} (default: the config's, "
        'fused for the distilled configs: the average of the cls and dist heads)',
    )
    parser.add_argument(
        '--logits', action='store_true', help='output the logits instead of the softmax'
    )
    parser.add_argument(
        '--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (default {DEFAULT_OPSET})'
    )
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config entries, key=value'
    )
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    try:
        config = args.config
        if args.cfg_options:
            config = load_config(config)
            config.merge_from_dict(args.cfg_options)
        return export_onnx(
            config,
            args.checkpoint,
            args.output,
            head=args.head,
            softmax=not args.logits,
            opset=args.opset,
        )
    except (FileNotFoundError, ValueError, ImportError) as err:
        sys.exit(f'mmdeit export: {err}')


if __name__ == '__main__':
    freeze_startup_objects()  # the imports' objects: no collector passes over them
    main()
