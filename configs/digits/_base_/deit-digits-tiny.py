# A small DeiT for 16x16 digits: 4x4 patches (16 patch tokens + cls + dist), 64 wide, 4 layers,
# 4 heads (0.14M parameters). The loss mode (and teacher) is set by the three configs that
# inherit this file: no distillation, hard and soft distillation.
model = dict(
    type='DistilledImageClassifier',
    backbone=dict(
        type='DistilledVisionTransformer',
        arch=dict(embed_dims=64, num_layers=4, num_heads=4, feedforward_channels=128),
        img_size=16,
        patch_size=4,
        drop_path_rate=0.1,
        out_type='cls_token',
    ),
    neck=None,
    head=dict(
        type='DeiTClsHead',
        num_classes=10,
        in_channels=64,
        loss=dict(
            type='DistillationLoss',
            mode='none',
            alpha=0.5,
            tau=1.0,
            base_loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        ),
    ),
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0),
    ],
    # Mixup 0.8 / CutMix 1.0 as in DeiT, but each on a quarter of the batches only (half are
    # left unmixed): at full strength the small student is far from converged in the budget.
    train_cfg=dict(
        augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)],
        probs=[0.25, 0.25],
    ),
)
