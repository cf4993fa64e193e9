# The digits DeiT student with hard distillation from the ResNet teacher
# (configs/digits/deit-digits-tiny-distilled-hard_1xb64_digits.py: same data, augmentation,
# teacher and 60-epoch schedule), fine-tuned from the SimMIM-pretrained encoder of
# configs/simmim/simmim_deit-digits-tiny_1xb64_digits.py (run that and the teacher first).
# Every backbone weight is loaded (cls and dist tokens included); the heads keep their
# truncated-normal init; the pretraining-only keys (backbone.mask_token, the decoder
# neck.decoder.*) are reported as unexpected and left out.
_base_ = '../../digits/deit-digits-tiny-distilled-hard_1xb64_digits.py'

model = dict(
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0),
        dict(
            type='Pretrained',
            checkpoint='work_dirs/simmim_deit-digits-tiny_1xb64_digits/epoch_100.pth',
        ),
    ],
)
