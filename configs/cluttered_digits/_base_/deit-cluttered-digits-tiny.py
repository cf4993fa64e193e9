# The digits' small DeiT (4 layers, 64 wide, 4 heads, 4x4 patches) on the 32x32 canvas: 64 patch
# tokens + cls + dist, the same 0.14M parameters but for the longer position embedding.
_base_ = '../../digits/_base_/deit-digits-tiny.py'

model = dict(backbone=dict(img_size=32))
