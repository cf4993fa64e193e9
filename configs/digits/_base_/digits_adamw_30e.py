# The teachers' schedule: the students' (digits_adamw_60e.py) in 30 epochs, 5 of warm-up. The
# teacher converges much faster than the students (about 99% val top-1 on digits after 10).
_base_ = './digits_adamw_60e.py'

max_epochs = 30
train_cfg = dict(max_epochs=max_epochs)
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
