# The convnet teacher of the digits tasks: a narrow CIFAR-style ResNet-18 (3x3 stem, no
# max-pool, 16 base channels, 0.70M parameters, 5x the student) from mmpretrain's model zoo,
# with the students' batch augmentation (see deit-digits-tiny.py). Global average pooling: any
# input size.
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
    train_cfg=dict(
        augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)],
        probs=[0.25, 0.25],
    ),
)
