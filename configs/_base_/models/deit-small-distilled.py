# DeiT-S with a distillation token trained against a convnet teacher (the paper's "DeiT-S⚗").
# Hard distillation (the paper's best): the dist token learns argmax(teacher), the cls token
# the (mixed, smoothed) labels; total = (1 - alpha) * base + alpha * distill, alpha = 0.5.
model = dict(
    type='DistilledImageClassifier',
    backbone=dict(
        type='DistilledVisionTransformer',
        arch='deit-small',
        img_size=224,
        patch_size=16,
        drop_path_rate=0.1,
    ),
    neck=None,
    head=dict(
        type='DeiTClsHead',
        num_classes=1000,
        in_channels=384,
        inference_mode='fusion',  # average of the cls and dist heads, as in the paper
        loss=dict(
            type='DistillationLoss',
            mode='hard',
            alpha=0.5,
            tau=1.0,
            base_loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        ),
    ),
    # The official teacher: RegNetY-16GF (timm 'regnety_160', 82.6% top-1), built through
    # timm and fed the student's batch (after Mixup/CutMix). Its weights are not downloaded at
    # run time: convert or copy them to `teacher_ckpt` first.
    teacher=dict(
        type='TimmClassifier', model_name='regnety_160', num_classes=1000, pretrained=False
    ),
    teacher_ckpt='checkpoints/regnety_160-a5fe301d.pth',
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0),
    ],
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)
