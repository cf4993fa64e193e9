# Mask R-CNN on COCO with a distilled DeiT-S backbone and mmdeit's ViTDet-style SimpleFPN:
# mmdet's Mask R-CNN and large-scale-jitter (LSJ, 1024x1024, 100 epochs) recipe, with the
# ViTDet changes (2-conv RPN, 4conv1fc box head, LayerNorm in the neck and the heads).
# Needs mmdet 3.3 (`pip install "mmdeit[det]"`); run with mmdet's tools/train.py.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::common/lsj-100e_coco-instance.py',
]
# Registers `mmdeit.*` types; the default scope stays mmdet's.
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
# Its 14x14 pos_embed is resized (bicubic) to the 64x64 grid of img_size=1024 when it loads; the
# cls and dist entries are kept as they are.
checkpoint = 'checkpoints/deit-small-distilled_mmdeit.pth'

image_size = (1024, 1024)
batch_augments = [dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)]
# A channel LayerNorm for (B, C, H, W) maps. mmdet registers none, so the heads name
# mmpretrain's with its scope; SimpleFPN looks 'LN2d' up in mmdeit's registry itself.
head_norm_cfg = dict(type='mmpretrain.LN2d', eps=1e-6)

model = dict(
    data_preprocessor=dict(pad_size_divisor=32, batch_augments=batch_augments),
    # What the neck sees: out_type='featmap' gives the patch tokens of the last layer as one
    # (B, 384, H/16, W/16) map. The cls and dist tokens are not in it, but they take part in
    # self-attention in every layer, so what they carry reaches the patch tokens.
    backbone=dict(
        _delete_=True,
        type='mmdeit.DistilledVisionTransformer',
        arch='deit-small',
        img_size=image_size,
        patch_size=16,
        out_type='featmap',
        out_indices=(11,),
        drop_path_rate=0.1,
        final_norm=True,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint, prefix='backbone.'),
    ),
    # strides 4, 8, 16, 32 from the stride-16 map, and 64 by subsampling: the RPN anchors'
    # and RoI extractors' strides of the base config
    neck=dict(
        _delete_=True,
        type='mmdeit.SimpleFPN',
        in_channels=384,
        out_channels=256,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        num_outs=5,
        norm_cfg=dict(type='LN2d', eps=1e-6),
    ),
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=head_norm_cfg
        ),
        mask_head=dict(norm_cfg=head_norm_cfg),
    ),
)

# Test at the training size (padded to 1024x1024), as ViTDet does.
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='Pad', size=image_size, pad_val=dict(img=(114, 114, 114))),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'),
    ),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# AdamW as ViTDet (batch 64); no weight decay on the position embedding, the two tokens and
# the norms. On GPUs, type='AmpOptimWrapper' halves the memory.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.1),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={
            'pos_embed': dict(decay_mult=0.0),
            'cls_token': dict(decay_mult=0.0),
            'dist_token': dict(decay_mult=0.0),
        },
    ),
)
