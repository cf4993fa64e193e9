# The small DeiT on cluttered digits with soft distillation: the hard config with the other
# loss mode.
_base_ = './deit-cluttered-digits-tiny-distilled-hard_1xb64_cluttered-digits.py'

model = dict(head=dict(loss=dict(mode='soft')))
