# The schedule of the three digits students (the teacher takes 30 epochs): the DeiT optimizer
# (AdamW, no weight decay on norms, biases, position embedding and tokens; from the ImageNet
# schedule) for a batch of 64, 5 epochs of linear warm-up, cosine decay, val every epoch.
_base_ = '../../_base_/schedules/imagenet_bs1024_adamw_deit.py'

max_epochs = 60
# torch's default (foreach) AdamW here: the digits results in README/docs were run with it.
optim_wrapper = dict(optimizer=dict(lr=2e-3, fused=None))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-2,
        by_epoch=True,
        begin=0,
        end=5,
        convert_to_iter_based=True,
    ),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-5,
        by_epoch=True,
        begin=5,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=64)
