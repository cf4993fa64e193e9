# The small DeiT on digits with hard-label distillation from the ResNet teacher (the paper's
# best variant): the distillation token learns the teacher's argmax on the same augmented
# batch. Train the teacher first (tools/train.py configs/digits/resnet-digits_1xb64_digits.py)
# or set model.teacher_ckpt; tools/demo.py does both.
_base_ = [
    './_base_/deit-digits-tiny.py',
    './_base_/digits_bs64.py',
    './_base_/digits_adamw_60e.py',
    './_base_/digits_runtime.py',
]

model = dict(
    head=dict(loss=dict(mode='hard')),
    teacher='{{ fileDirname }}/resnet-digits_1xb64_digits.py',
    teacher_ckpt='work_dirs/resnet-digits_1xb64_digits/epoch_30.pth',
)
