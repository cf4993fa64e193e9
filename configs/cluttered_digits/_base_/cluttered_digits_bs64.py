# Cluttered, translated digits (mmdeit's ClutteredDigitsDataset, made from scikit-learn's digits
# and their split: 1,437 train / 360 val): a 16x16 digit at a random place on a 32x32 black
# canvas with 4 clutter fragments (6x6 crops of other classes' digits), the task's stated
# difficulty. The digits' data settings (batch 64, no worker processes) at the canvas's size:
# no resize, the same mild augmentation (small shifts and rotations, no flips).
_base_ = '../../digits/_base_/digits_bs64.py'

dataset_type = 'ClutteredDigitsDataset'
img_size = 32
data_preprocessor = dict(
    num_classes=10,
    mean=[32.00] * 3,  # pixel mean/std of the cluttered train images (0..255)
    std=[73.28] * 3,
    to_rgb=False,
)

train_pipeline = [
    dict(type='RandomCrop', crop_size=img_size, padding=2),
    dict(
        type='Rotate',
        angle=15.0,
        prob=0.5,
        random_negative_prob=0.5,
        pad_val=0,  # the canvas is black
        interpolation='bilinear',
    ),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='PackInputs')]

train_dataloader = dict(dataset=dict(type=dataset_type, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type=dataset_type, pipeline=test_pipeline))
test_dataloader = val_dataloader
