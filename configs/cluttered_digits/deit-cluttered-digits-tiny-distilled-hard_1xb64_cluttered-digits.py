# The small DeiT on cluttered digits with hard-label distillation from the ResNet teacher of
# this folder (train it first, or set model.teacher_ckpt; tools/digits_convergence.py
# --task cluttered does both).
_base_ = [
    './_base_/deit-cluttered-digits-tiny.py',
    './_base_/cluttered_digits_bs64.py',
    '../digits/_base_/digits_adamw_60e.py',
    '../digits/_base_/digits_runtime.py',
]

model = dict(
    head=dict(loss=dict(mode='hard')),
    teacher='{{ fileDirname }}/resnet-cluttered-digits_1xb64_cluttered-digits.py',
    teacher_ckpt='work_dirs/resnet-cluttered-digits_1xb64_cluttered-digits/epoch_30.pth',
)
