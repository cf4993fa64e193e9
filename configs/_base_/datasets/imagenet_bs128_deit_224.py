# ImageNet-1k with the official DeiT augmentation (timm create_transform arguments of main.py):
# RandomResizedCrop 224 bicubic, flip, RandAugment rand-m9-mstd0.5-inc1 (no colour jitter when
# RandAugment is on), random erasing 0.25 'pixel' mode; eval: resize 256 (224 / 0.875) bicubic,
# centre crop 224. Mixup/CutMix live in the model's train_cfg (batch augments).
dataset_type = 'ImageNet'
data_root = 'data/imagenet'
data_preprocessor = dict(
    num_classes=1000,
    mean=[123.675, 116.28, 103.53],  # ImageNet mean/std in RGB, 0-255
    std=[58.395, 57.12, 57.375],
    to_rgb=True,
)
bgr_mean = data_preprocessor['mean'][::-1]
bgr_std = data_preprocessor['std'][::-1]

# TrainPipeline's switch (docs/benchmarks.md, "The training data pipeline"): 'exact' (shipped)
# gives mmpretrain's transforms' pixels bit for bit through faster kernels (contiguous crop before
# PIL's resize, cv2.flip, RandAugment's point ops as lookup tables), False runs mmpretrain's
# objects as they are, and True also decodes at a reduced DCT scale and resizes with torch: the
# same draws, more images per core, pixels within the stated bounds. From the command line:
# --cfg-options train_dataloader.dataset.pipeline.0.fast_pipeline=True
train_augment = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic'),
    ),
    dict(
        type='RandomErasing',
        erase_prob=0.25,
        mode='rand',
        min_area_ratio=0.02,
        max_area_ratio=1 / 3,
        fill_color=bgr_mean,
        fill_std=bgr_std,
    ),
]
train_pipeline = [
    dict(type='TrainPipeline', transforms=train_augment, fast_pipeline='exact'),
    dict(type='PackInputs'),
]

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=128,
    num_workers=8,
    dataset=dict(type=dataset_type, data_root=data_root, split='train', pipeline=train_pipeline),
    # Repeated augmentation (3 repeats), as the official recipe's RASampler.
    sampler=dict(type='RepeatAugSampler', num_repeats=3, shuffle=True),
    persistent_workers=True,
)

val_dataloader = dict(
    batch_size=128,
    num_workers=8,
    dataset=dict(type=dataset_type, data_root=data_root, split='val', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
    persistent_workers=True,
)
# mmdeit's Accuracy (default_scope 'mmdeit'): mmpretrain's top-k plus, with a DeiTClsHead, the
# paper's per-head top-1 (cls, dist, fused), the teacher's and their agreement as per_head/*
# (the teacher's only in training: tools/test.py builds the student alone). A child config
# overrides it as in mmpretrain: val_evaluator = dict(type='Accuracy', topk=(1,)).
val_evaluator = dict(type='Accuracy', topk=(1, 5))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
