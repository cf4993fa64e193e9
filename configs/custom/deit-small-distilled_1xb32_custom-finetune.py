# Fine-tune DeiT-S⚗ (converted official/timm weights) on your own class folders, distilled from
# your own teacher. Copy it or inherit it (`_base_ = 'mmdeit::custom/<this file>'`); see
# docs/custom_dataset.md for the whole path: convert -> config -> train -> test -> infer -> export.
_base_ = [
    '../_base_/models/deit-small-distilled.py',
    '../_base_/datasets/imagenet_bs128_deit_224.py',
    '../_base_/schedules/imagenet_bs1024_adamw_deit.py',
    '../_base_/default_runtime.py',
]

# PLACEHOLDER: the number of class folders under data/custom/train. A child config that changes
# it sets it again where it is used: model.head, model.teacher and data_preprocessor (a base's
# variable is read when the base is, not again for a child).
num_classes = 10

# The converter's output (`python -m mmdeit convert <official or timm file> <this path>`) loaded
# in full: backbone and both heads. Heads of another class count keep the truncated-normal init
# before it (mmengine warns "size mismatch" and goes on).
model = dict(
    head=dict(num_classes=num_classes),
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0),
        dict(type='Pretrained', checkpoint='checkpoints/deit_small_distilled_mmdeit.pth'),
    ],
    # Your teacher, already trained on your classes: a timm model by name and your checkpoint
    # (an mmpretrain model works too: teacher='path/to/its_config.py').
    teacher=dict(
        _delete_=True,
        type='TimmClassifier',
        model_name='resnet50',
        num_classes=num_classes,
        pretrained=False,
    ),
    teacher_ckpt='checkpoints/my_teacher_resnet50.pth',
    # Mixup only, and mild: CutMix and strong Mixup hide most of a small data set's few objects.
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.2)]),
)

# Data: mmpretrain's CustomDataset, data/custom/{train,val}/<class>/*.jpg (classes = the folder
# names, sorted). Lighter augmentation than the ImageNet recipe: no RandAugment and no random
# erasing (they regularise 300 epochs from scratch; a short fine-tune on few images learns less
# with them), crops that keep at least a third of the image so the object stays in view.
data_root = 'data/custom'
data_preprocessor = dict(num_classes=num_classes)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='RandomResizedCrop',
        scale=224,
        crop_ratio_range=(0.35, 1.0),
        backend='pillow',
        interpolation='bicubic',
    ),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=32,
    num_workers=4,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix='train',
        pipeline=train_pipeline,
    ),
    sampler=dict(_delete_=True, type='DefaultSampler', shuffle=True),
)
val_dataloader = dict(
    batch_size=32,
    num_workers=4,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix='val',
        pipeline={{_base_.test_pipeline}},
    ),
)
test_dataloader = val_dataloader
# top-5 says little with few classes (and needs 5 of them); the per_head/* keys stay
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = val_evaluator

# Fine-tune schedule: the weights are already good, so a small lr (5e-5 for a batch of 32, a
# tenth of the from-scratch recipe's per-image rate) for 30 epochs, 2 of linear warm-up, then
# cosine to 1e-6: few images overfit fast, so a long schedule buys nothing.
optim_wrapper = dict(optimizer=dict(lr=5e-5))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=2, end=30,
         convert_to_iter_based=True),
]  # fmt: skip
train_cfg = dict(max_epochs=30)
auto_scale_lr = dict(base_batch_size=32)
default_hooks = dict(logger=dict(interval=10))

# Check the teacher on the val set before training (its top-1 in the log; a near-chance one is
# a wrong checkpoint or class order), and stop on a NaN loss.
custom_hooks = [dict(type='TeacherCheckHook'), dict(type='NanGuardHook')]
