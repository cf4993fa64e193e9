# Fine-tune DeiT-B⚗ at 384x384 from its distilled 224 checkpoint; the teacher sees the same
# 384 batch.
_base_ = [
    '../_base_/models/deit-small-distilled.py',
    '../_base_/datasets/imagenet_bs32_deit_384.py',
    '../_base_/schedules/imagenet_bs256_adamw_deit_384_finetune.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        arch='deit-base',
        img_size=384,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='work_dirs/deit-base-distilled_8xb128_in1k/epoch_300.pth',
            prefix='backbone.',
        ),
    ),
    head=dict(in_channels=768),
)
