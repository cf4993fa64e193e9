# SimMIM pretraining of DeiT-S⚗ (the distilled DeiT-S backbone, with its dist token) on ImageNet-1k
# at 224: HF's DeiTForMaskedImageModeling in mmpretrain's self-supervised framework. A learnt mask
# token replaces 60% of the patch embeddings (mmpretrain's SimMIMMaskGenerator: 32x32 blocks, 2x2
# patches each), the linear decoder (1x1 conv to 16*16*3 channels + pixel shuffle) reconstructs the
# image from the 196 patch tokens (cls and dist left out) and the L1 loss counts the masked pixels.
# Schedule and optimizer of mmpretrain's SimMIM recipe (simmim_swin-base-w6_8xb256-amp-coslr-
# 100e_in1k-192px.py): AdamW lr 8e-4 for a total batch of 2048, 10 warm-up epochs, cosine, fp16
# AMP (mmengine's AmpOptimWrapper needs a GPU; on a CPU run tools/train.py --amp, which turns it
# into bf16 CPUAmpOptimWrapper). Not trained here; fine-tune with a DeiT-S⚗ config whose last
# init_cfg is dict(type='Pretrained', checkpoint=<epoch_100.pth>), as configs/simmim/benchmarks/.
_base_ = ['../_base_/default_runtime.py']

model = dict(
    type='DeiTSimMIM',
    backbone=dict(
        type='MaskedDistilledVisionTransformer',
        arch='deit-small',
        img_size=224,
        patch_size=16,
        drop_path_rate=0.1,
        out_type='featmap',  # the 196 patch tokens as a (B, 384, 14, 14) map, for the decoder
    ),
    neck=dict(type='SimMIMLinearDecoder', in_channels=384, encoder_stride=16),
    head=dict(
        type='SimMIMHead',
        patch_size=16,
        loss=dict(type='PixelReconstructionLoss', criterion='L1', channel=3),
    ),
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0),
    ],
)

# ImageNet mean/std in RGB; pseudo_collate batches stacked by ClsDataPreprocessor (no labels
# used; see configs/simmim/simmim_deit-digits-tiny_1xb64_digits.py for why not
# SelfSupDataPreprocessor).
data_preprocessor = dict(
    type='ClsDataPreprocessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True,
)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='RandomResizedCrop',
        scale=224,
        crop_ratio_range=(0.67, 1.0),
        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
        backend='pillow',
        interpolation='bicubic',
    ),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='SimMIMMaskGenerator',
        input_size=224,
        mask_patch_size=32,
        model_patch_size=16,
        mask_ratio=0.6,
    ),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=256,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='ImageNet', data_root='data/imagenet', split='train', pipeline=train_pipeline
    ),
)

optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=2e-4 * 2048 / 512, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=5.0),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            '.cls_token': dict(decay_mult=0.0),
            '.dist_token': dict(decay_mult=0.0),
            '.mask_token': dict(decay_mult=0.0),
            '.pos_embed': dict(decay_mult=0.0),
        },
    ),
)
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-6 / 2e-4,
        by_epoch=True,
        begin=0,
        end=10,
        convert_to_iter_based=True,
    ),
    dict(
        type='CosineAnnealingLR',
        T_max=90,
        eta_min=1e-5 * 2048 / 512,
        by_epoch=True,
        begin=10,
        end=100,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=100)
default_hooks = dict(checkpoint=dict(interval=10, max_keep_ckpts=3, save_best=None))
# Scale the lr linearly with the real total batch size (tools/train.py --auto-scale-lr).
auto_scale_lr = dict(base_batch_size=2048)
