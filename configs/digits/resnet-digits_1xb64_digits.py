# The convnet teacher of the digits demo: a narrow CIFAR-style ResNet-18 (3x3 stem, no max-pool,
# 16 base channels, ~0.7M parameters) from mmpretrain's model zoo, trained with exactly the
# students' data, augmentation (incl. Mixup/CutMix) and schedule.
_base_ = [
    './_base_/digits_bs64.py',
    './_base_/digits_adamw_100e.py',
    './_base_/digits_runtime.py',
]

model = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=16, base_channels=16),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=128,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
    ),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)
