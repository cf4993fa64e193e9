# The small DeiT on cluttered digits without a teacher (its distillation head is never trained;
# it predicts with the class token), the digits student's recipe on the 32x32 canvas.
_base_ = [
    './_base_/deit-cluttered-digits-tiny.py',
    './_base_/cluttered_digits_bs64.py',
    '../digits/_base_/digits_adamw_60e.py',
    '../digits/_base_/digits_runtime.py',
]

model = dict(head=dict(inference_mode='cls', loss=dict(mode='none')))
