"""Odd files a real dataset holds (tiny, thin, huge, grey, CMYK, RGBA, palette, 16-bit, EXIF
rotation, truncated), written for the train pipeline's tests."""

import io

import numpy as np
from PIL import Image

from tools.analysis.imagenet_jpegs import photo_like


def odd_images(folder) -> dict:
    """Odd files a real dataset holds, by name."""
    rng = np.random.default_rng(1)
    rgb = photo_like(64, 48, rng)
    files = {}

    def save(name, img, **kwargs):
        files[name] = str(folder / name)
        img.save(files[name], **kwargs)

    save('tiny_1x1.jpg', Image.fromarray(rgb[:1, :1]))
    save('tiny_3x2.png', Image.fromarray(rgb[:2, :3]))
    save('thin_400x5.jpg', Image.fromarray(photo_like(400, 5, rng)))
    save('huge_3200x2400.jpg', Image.fromarray(photo_like(3200, 2400, rng)), quality=85)
    save('grey.jpg', Image.fromarray(rgb[..., 0]))
    save('grey.png', Image.fromarray(rgb[..., 1]))
    save('cmyk.jpg', Image.fromarray(rgb).convert('CMYK'))
    save('rgba.png', Image.fromarray(np.dstack([rgb, rgb[..., :1]])))
    save('palette.png', Image.fromarray(rgb).convert('P'))
    save('grey16.png', Image.fromarray(rgb[..., 0].astype(np.uint16) * 257))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    save('exif_rotated.jpg', Image.fromarray(photo_like(640, 480, rng)), exif=exif)
    buf = io.BytesIO()
    Image.fromarray(photo_like(600, 450, rng)).save(buf, format='JPEG')
    files['truncated.jpg'] = str(folder / 'truncated.jpg')
    (folder / 'truncated.jpg').write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    return files
