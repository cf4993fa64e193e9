# SimMIM pretraining of the small digits DeiT (configs/digits/_base_/deit-digits-tiny.py: 16x16
# input, 4x4 patches, 64 wide, 4 layers, cls + dist tokens) on the 1,437 digits training images
# (labels unused): a learnt mask token replaces 60% of the patch embeddings (mmpretrain's
# SimMIMMaskGenerator, one mask cell per patch: 10 of the 16 patches), a linear decoder (1x1 conv
# + pixel shuffle, HF's DeiTForMaskedImageModeling decoder) reconstructs the image from the patch
# tokens and the L1 loss counts the masked pixels only. No validation (nothing to evaluate); the
# students of configs/simmim/benchmarks/ fine-tune from the last checkpoint.
_base_ = [
    '../digits/_base_/digits_bs64.py',
    '../digits/_base_/digits_adamw_60e.py',
    '../digits/_base_/digits_runtime.py',
]

img_size = 16
patch_size = 4
model = dict(
    type='DeiTSimMIM',
    backbone=dict(
        type='MaskedDistilledVisionTransformer',
        arch=dict(embed_dims=64, num_layers=4, num_heads=4, feedforward_channels=128),
        img_size=img_size,
        patch_size=patch_size,
        drop_path_rate=0.1,
        out_type='featmap',  # the 16 patch tokens as a (B, 64, 4, 4) map, for the decoder
    ),
    neck=dict(type='SimMIMLinearDecoder', in_channels=64, encoder_stride=patch_size),
    head=dict(
        type='SimMIMHead',
        patch_size=patch_size,
        loss=dict(type='PixelReconstructionLoss', criterion='L1', channel=3),
    ),
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0),
    ],
)

# No labels to one-hot and no batch augments; the same normalisation as the students, so that
# the fine-tuned encoder sees the same inputs. mmpretrain's ClsDataPreprocessor stacks the
# default (pseudo_collate) batches: its SelfSupDataPreprocessor needs
# collate_fn=dict(type='default_collate'), which breaks in configs that inherit this one through
# 'mmdeit::' (mmengine then adds a _scope_ key that default_collate refuses).
data_preprocessor = dict(
    _delete_=True,
    type='ClsDataPreprocessor',
    mean=[77.85] * 3,
    std=[95.85] * 3,
    to_rgb=False,
)
train_pipeline = [
    dict(type='Resize', scale=(img_size, img_size), interpolation='bicubic', backend='pillow'),
    dict(type='RandomCrop', crop_size=img_size, padding=2),
    dict(type='Rotate', angle=15.0, prob=0.5, random_negative_prob=0.5, interpolation='bilinear'),
    dict(
        type='SimMIMMaskGenerator',
        input_size=img_size,
        mask_patch_size=patch_size,
        model_patch_size=patch_size,
        mask_ratio=0.6,
    ),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = val_evaluator = val_cfg = None
test_dataloader = test_evaluator = test_cfg = None

# AdamW (the students' parameter groups, plus no decay on the mask token), 100 epochs: 10 of
# linear warm-up, cosine decay; gradients clipped at norm 5 as in mmpretrain's SimMIM recipes.
max_epochs = 100
optim_wrapper = dict(
    optimizer=dict(lr=1e-3),
    clip_grad=dict(max_norm=5.0),
    paramwise_cfg=dict(custom_keys={'.mask_token': dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-2,
        by_epoch=True,
        begin=0,
        end=10,
        convert_to_iter_based=True,
    ),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-5,
        by_epoch=True,
        begin=10,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(checkpoint=dict(save_best=None))
