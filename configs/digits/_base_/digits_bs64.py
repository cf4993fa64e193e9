# scikit-learn's digits (1,797 8x8 grey images, 10 classes; mmdeit's DigitsDataset, a fixed
# stratified 80/20 split: 1,437 train / 360 val), upsampled to 16x16. The images are already in
# the data infos, so the pipelines start without LoadImageFromFile. Mild augmentation for
# 8x8 digits: no flips (a mirrored digit is another symbol), small shifts and rotations; the
# model's train_cfg adds Mixup/CutMix, as on ImageNet. The data is loaded in the training process
# (num_workers=0): for 8x8 images a worker process costs more in inter-process copies than it
# saves.
dataset_type = 'DigitsDataset'
img_size = 16
data_preprocessor = dict(
    num_classes=10,
    mean=[77.85] * 3,  # pixel mean/std of the digits scaled to 0..255
    std=[95.85] * 3,
    to_rgb=False,  # the three channels are identical
)

train_pipeline = [
    dict(type='Resize', scale=(img_size, img_size), interpolation='bicubic', backend='pillow'),
    dict(type='RandomCrop', crop_size=img_size, padding=2),
    dict(type='Rotate', angle=15.0, prob=0.5, random_negative_prob=0.5, interpolation='bilinear'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='Resize', scale=(img_size, img_size), interpolation='bicubic', backend='pillow'),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    dataset=dict(type=dataset_type, split='train', pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
    persistent_workers=False,
)
val_dataloader = dict(
    batch_size=120,
    num_workers=0,
    dataset=dict(type=dataset_type, split='val', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
    persistent_workers=False,
)
# mmdeit's Accuracy (default_scope 'mmdeit'): mmpretrain's top-k plus, with a DeiTClsHead, the
# paper's per-head top-1 (cls, dist, fused), the teacher's and their agreement as per_head/*
# (the teacher's only in training: tools/test.py builds the student alone). A child config
# overrides it as in mmpretrain: val_evaluator = dict(type='Accuracy', topk=(1,)).
val_evaluator = dict(type='Accuracy', topk=(1,))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
