# The official DeiT fine-tuning at 384 for a total batch of 256 (8 GPUs x 32): 30 epochs,
# AdamW lr 5e-6 per 512 images, weight decay 1e-8, constant lr (min lr = lr).
_base_ = './imagenet_bs1024_adamw_deit.py'

optim_wrapper = dict(optimizer=dict(lr=5e-6 * 256 / 512, weight_decay=1e-8))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=True, begin=0, end=30)]
train_cfg = dict(max_epochs=30)
auto_scale_lr = dict(base_batch_size=256)
