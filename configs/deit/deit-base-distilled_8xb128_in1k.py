_base_ = './deit-small-distilled_8xb128_in1k.py'

model = dict(backbone=dict(arch='deit-base'), head=dict(in_channels=768))
