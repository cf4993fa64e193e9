# UPerNet on ADE20K 512x512 with a distilled DeiT-S backbone: mmseg's
# `vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py` recipe with mmdeit's backbone.
# Needs mmsegmentation 1.2 (`pip install "mmdeit[seg]"`); run with mmseg's tools/train.py.
_base_ = [
    'mmseg::_base_/models/upernet_vit-b16_ln_mln.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
# Registers `mmdeit.*` types; the default scope stays mmseg's.
custom_imports = dict(imports=['mmdeit'], allow_failed_imports=False)
# mmdeit's checkpoint hook (a CheckpointHook): atomic checkpoint writes, and mmdeit's safe loader
# for every checkpoint the run reads, so an mmdeit training checkpoint (mmengine's logged
# statistics inside) loads as `checkpoint` below on torch >= 2.6 (weights_only).
default_hooks = dict(checkpoint=dict(type='mmdeit.AtomicCheckpointHook'))
# A clean exit from a distributed run: destroys the process group once training (or testing)
# has succeeded, so no rank aborts at exit with gloo's threads alive (SIGABRT after a finished
# run); mmdeit's own tools do it themselves.
custom_hooks = [dict(type='mmdeit.DestroyProcessGroupHook')]

# A distilled DeiT-S classifier checkpoint with its 'backbone.' keys (two extra tokens):
# trained by mmdeit, or the official one converted by
#   python tools/model_converters/deit_to_mmdeit.py \
#       deit_small_distilled_patch16_224-649709d9.pth checkpoints/deit-small-distilled_mmdeit.pth
# Its 14x14 pos_embed is resized (bicubic) to the 32x32 grid of img_size=512 when it loads; the
# cls and dist entries are kept as they are.
checkpoint = 'checkpoints/deit-small-distilled_mmdeit.pth'

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    # mmseg's EncoderDecoder would pass `pretrained` to the backbone: the weights come from
    # the backbone's init_cfg instead.
    pretrained=None,
    # What the necks see: out_type='featmap' gives the patch tokens of layers 3, 6, 9 and 12
    # as (B, 384, H/16, W/16) maps. The cls and dist tokens are not in these maps, but they
    # take part in self-attention in every layer, so what they carry reaches the patch tokens.
    # final_norm applies the last LayerNorm to the last output only (mmseg's "ln" variant).
    backbone=dict(
        _delete_=True,
        type='mmdeit.DistilledVisionTransformer',
        arch='deit-small',
        img_size=crop_size,
        patch_size=16,
        out_type='featmap',
        out_indices=(2, 5, 8, 11),
        drop_path_rate=0.1,
        final_norm=True,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint, prefix='backbone.'),
    ),
    # strides 4, 8, 16, 32 from the four stride-16 maps
    neck=dict(in_channels=[384, 384, 384, 384], out_channels=384, scales=[4, 2, 1, 0.5]),
    decode_head=dict(num_classes=150, in_channels=[384, 384, 384, 384]),
    auxiliary_head=dict(num_classes=150, in_channels=384),
)

# AdamW; no weight decay on the position embedding, the two tokens and the norms.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={
            'pos_embed': dict(decay_mult=0.0),
            'cls_token': dict(decay_mult=0.0),
            'dist_token': dict(decay_mult=0.0),
        },
    ),
)

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]

# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
