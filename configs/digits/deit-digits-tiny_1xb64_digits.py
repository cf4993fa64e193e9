# The small DeiT on digits without a teacher (distillation loss mode 'none'). Its distillation
# token is still there but its head is never trained, so it predicts with the class token only.
_base_ = [
    './_base_/deit-digits-tiny.py',
    './_base_/digits_bs64.py',
    './_base_/digits_adamw_60e.py',
    './_base_/digits_runtime.py',
]

model = dict(head=dict(inference_mode='cls', loss=dict(mode='none')))
