# Fine-tune DeiT-B at 384x384 from its 224 checkpoint. pos_embed is resized bicubically from
# 14x14 to 24x24 when the checkpoint is loaded, keeping the extra tokens.
_base_ = [
    '../_base_/models/deit-small.py',
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
            checkpoint='work_dirs/deit-base_8xb128_in1k/epoch_300.pth',
            prefix='backbone.',
        ),
    ),
    head=dict(in_channels=768),
)
