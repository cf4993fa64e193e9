# Fine-tune DeiT-B⚗ at 384x384 from its distilled 224 checkpoint; the teacher sees the same
# 384 batch.
_base_ = [
    '../_base_/models/deit-small-distilled.py',
    '../_base_/datasets/imagenet_bs32_deit_384.py',
    '../_base_/schedules/imagenet_bs256_adamw_deit_384_finetune.py',
    '../_base_/default_runtime.py',
]

# The whole classifier starts from the 224 checkpoint, as the official fine-tuning does: backbone
# and head(s); pos_embed is resized from 14x14 to 24x24 on load (the extra tokens kept). A head
# whose shape differs (another class count) keeps the truncated-normal initialisation before it,
# with a warning.
model = dict(
    backbone=dict(arch='deit-base', img_size=384),
    head=dict(in_channels=768),
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0),
        dict(
            type='Pretrained',
            checkpoint='work_dirs/deit-base-distilled_8xb128_in1k/epoch_300.pth',
        ),
    ],
)
