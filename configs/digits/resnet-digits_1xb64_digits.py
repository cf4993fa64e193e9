# The convnet teacher of the digits demo (_base_/resnet-digits.py: a narrow CIFAR ResNet-18),
# trained with exactly the students' data, augmentation (incl. Mixup/CutMix) and optimizer, for
# half their epochs (_base_/digits_adamw_30e.py).
_base_ = [
    './_base_/resnet-digits.py',
    './_base_/digits_bs64.py',
    './_base_/digits_adamw_30e.py',
    './_base_/digits_runtime.py',
]
