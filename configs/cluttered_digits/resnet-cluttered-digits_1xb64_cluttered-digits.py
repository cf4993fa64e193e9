# The convnet teacher on cluttered digits: the digits' narrow CIFAR ResNet-18 (global average
# pooling, so the 32x32 canvas needs no change) and its 30-epoch schedule, with this folder's
# data.
_base_ = [
    '../digits/_base_/resnet-digits.py',
    './_base_/cluttered_digits_bs64.py',
    '../digits/_base_/digits_adamw_30e.py',
    '../digits/_base_/digits_runtime.py',
]
