# The official DeiT schedule for a total batch of 1024 (8 GPUs x 128):
# AdamW, lr = 5e-4 * batch / 512, weight decay 0.05 (none on norms, biases, position embedding
# and the cls/dist tokens), 300 epochs, 5 linear warm-up epochs from 1e-6, cosine to 1e-5.
optim_wrapper = dict(
    # fused: one kernel over all parameters (CPU and CUDA, torch >= 2.4), same update rule.
    optimizer=dict(
        type='AdamW',
        lr=5e-4 * 1024 / 512,
        weight_decay=0.05,
        eps=1e-8,
        betas=(0.9, 0.999),
        fused=True,
    ),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            '.cls_token': dict(decay_mult=0.0),
            '.dist_token': dict(decay_mult=0.0),
            '.pos_embed': dict(decay_mult=0.0),
        },
    ),
)

param_scheduler = [
    # 5e-4 * 1024 / 512 = 1e-3; start factor so that warm-up starts at 1e-6
    dict(
        type='LinearLR',
        start_factor=1e-3,
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
        end=300,
        convert_to_iter_based=True,
    ),
]

train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# Scale the lr linearly with the real total batch size (tools/train.py --auto-scale-lr).
auto_scale_lr = dict(base_batch_size=1024)
