# DeiT-S⚗ with hard distillation from RegNetY-16GF on ImageNet-1k (official recipe).
_base_ = [
    '../_base_/models/deit-small-distilled.py',
    '../_base_/datasets/imagenet_bs128_deit_224.py',
    '../_base_/schedules/imagenet_bs1024_adamw_deit.py',
    '../_base_/default_runtime.py',
]

custom_hooks = [
    dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL'),
    dict(type='NanGuardHook'),
]
