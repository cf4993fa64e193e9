"""Classify an image and print the top-5 classes: ``python tools/infer.py IMG CONFIG CKPT``."""

import argparse
import sys

import numpy as np

from mmdeit.apis import inference_model, init_model
from mmdeit.apis.inference import check_image_file
from mmdeit.engine import KEEP_FREED_HELP, freeze_startup_objects, keep_freed_memory


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Classify an image with an mmdeit model')
    parser.add_argument('img', help='image file')
    parser.add_argument('config', help='config file, or mmdeit::path of a shipped one')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--device', default='cpu', help='device, e.g. cpu or cuda:0')
    parser.add_argument('--topk', type=int, default=5, help='how many classes to print')
    parser.add_argument('--no-keep-freed-memory', action='store_true', help=KEEP_FREED_HELP)
    args = parser.parse_args(argv)
    if args.topk < 1:
        parser.error(f'--topk must be at least 1, got {args.topk}')
    return args


def main(argv=None):
    args = parse_args(argv)
    if not args.no_keep_freed_memory:
        keep_freed_memory()  # fewer page faults for the tensors of every step
    try:
        check_image_file(args.img)  # before the model is loaded, which takes a while
        model = init_model(args.config, args.checkpoint, device=args.device)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'mmdeit infer: {err}')
    try:
        result = inference_model(model, args.img)
    except ValueError as err:  # a file that is not an image
        sys.exit(f'mmdeit infer: {err}')
    classes = model.dataset_meta.get('classes')
    scores = result['pred_scores']
    print(f'{args.img}: top-{min(args.topk, len(scores))}')
    for rank, idx in enumerate(np.argsort(-scores)[: args.topk], start=1):
        name = classes[idx] if classes else str(idx)
        print(f'{rank}. {name:<30} {scores[idx]:.4f}  (class {idx})')
    return result


if __name__ == '__main__':
    freeze_startup_objects()  # the imports' objects: no collector passes over them
    main()
