# The small DeiT on digits with soft distillation (KL to the teacher's softened distribution,
# temperature tau) from the ResNet teacher on the same augmented batch: the hard-distillation
# config with the other loss mode.
_base_ = './deit-digits-tiny-distilled-hard_1xb64_digits.py'

model = dict(head=dict(loss=dict(mode='soft')))
