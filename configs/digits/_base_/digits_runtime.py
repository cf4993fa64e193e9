# mmdeit's runtime, quieter for runs of a few seconds per epoch: log every 10 iterations, keep
# only the last checkpoint and the best one on val top-1.
_base_ = ['../../_base_/default_runtime.py']

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='AtomicCheckpointHook', interval=10, max_keep_ckpts=1, save_last=True),
)
randomness = dict(seed=0, deterministic=False)
