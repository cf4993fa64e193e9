# The small DeiT on digits with soft distillation (KL to the teacher's softened
# distribution, temperature tau) from the ResNet teacher on the same augmented
# batch. Train the teacher first (tools/train.py configs/digits/resnet-digits_1xb64_digits.py)
# or set model.teacher_ckpt; tools/demo.py does both.
_base_ = [
    './_base_/deit-digits-tiny.py',
    './_base_/digits_bs64.py',
    './_base_/digits_adamw_60e.py',
    './_base_/digits_runtime.py',
]

model = dict(
    head=dict(loss=dict(mode='soft')),
    teacher='{{ fileDirname }}/resnet-digits_1xb64_digits.py',
    teacher_ckpt='work_dirs/resnet-digits_1xb64_digits/epoch_30.pth',
)
