# Runtime defaults shared by every mmdeit recipe.
default_scope = 'mmdeit'

# AtomicCheckpointHook (mmdeit.engine): mmengine's CheckpointHook whose checkpoints survive a
# kill while they are written; building it turns on mmdeit's safe checkpoint loader (resume on
# torch >= 2.6, code-running pickles refused) and atomic local writes. Children that set only
# some of its fields (interval, ...) keep the type.
# RNGStateHook (mmdeit.engine): checkpoints carry every random state (torch, numpy, random, the
# sampler's and the data workers' seeds, the place in the epoch), so a resumed run repeats the
# uninterrupted one bit for bit (docs/resume.md). A default hook rather than a custom one, so
# that configs which replace the custom_hooks list keep it.
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=3, save_best='auto'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False),
    rng_state=dict(type='RNGStateHook'),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)

# Stop with a clear message on a NaN/inf loss, before the broken state is checkpointed.
custom_hooks = [dict(type='NanGuardHook')]

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)

log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
