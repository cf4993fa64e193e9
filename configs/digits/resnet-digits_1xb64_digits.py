# The convnet teacher of the digits demo: a narrow CIFAR-style ResNet-18 (3x3 stem, no max-pool,
# 16 base channels, 0.70M parameters, 5x the student) from mmpretrain's model zoo, trained with
# exactly the students' data, augmentation (incl. Mixup/CutMix) and optimizer. It converges much
# faster than the students (about 99% val top-1 after 10 epochs), so it gets half their epochs.
_base_ = [
    './_base_/digits_bs64.py',
    './_base_/digits_adamw_60e.py',
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
    # the students' batch augmentation, see _base_/deit-digits-tiny.py
    train_cfg=dict(
        augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)],
        probs=[0.25, 0.25],
    ),
)

max_epochs = 30
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-2,
        by_epoch=True,
        begin=0,
        end=5,
        convert_to_iter_based=True,
    ),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-5,
        by_epoch=True,
        begin=5,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]
