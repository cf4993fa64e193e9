# DeiT-S trained from scratch on ImageNet-1k, no distillation (official recipe, 8 GPUs x 128).
_base_ = [
    '../_base_/models/deit-small.py',
    '../_base_/datasets/imagenet_bs128_deit_224.py',
    '../_base_/schedules/imagenet_bs1024_adamw_deit.py',
    '../_base_/default_runtime.py',
]

# The official code clips no gradients for DeiT and keeps an EMA of the weights
# (model_ema, decay 0.99996, i.e. momentum 4e-5); the paper reports the raw model.
custom_hooks = [
    dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL'),
    dict(type='NanGuardHook'),
]
