"""Reading one image file as the importer and the prediction script do: any format PIL reads,
EXIF orientation applied, converted to 8-bit RGB and resized bilinearly to the dataset's size.
``scripts/create_datasets.py`` stores the result as PNG; ``scripts/predict.py`` feeds it to an
exported model, so a new image reaches the network exactly as a training image did.
"""
import io
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps

# Images are resized to at most a few hundred pixels; a header claiming more than this is refused
# before decoding (a small PNG can claim 12000 x 12000 pixels and take gigabytes to decode).
MAX_IMAGE_PIXELS = 50_000_000

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm')


def _to_rgb(image):
    """Any PIL mode -> 8-bit RGB; 16-bit/int/float greyscale is scaled instead of clipped."""
    if image.mode.startswith('I;16') or image.mode in ('I', 'F'):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith('I;16') or array.max() > 255:
            array = array / 257.0
        image = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), 'L')
    if image.mode == 'P' and 'transparency' in image.info:
        image = image.convert('RGBA')    # palette transparency must go through RGBA first
    # The alpha channel is dropped (not composited): transparent pixels keep their stored colour.
    return image.convert('RGB')


def _open_regular_file(path):
    """Opens ``path`` for reading without blocking; refuses FIFOs, sockets and devices."""
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError('not a regular file (a FIFO, socket or device)')
        return os.fdopen(fd, 'rb')
    except BaseException:
        os.close(fd)
        raise


def load_image(path, image_size):
    """Decodes one image file fully; its RGB image resized bilinearly to ``image_size``."""
    with _open_regular_file(path) as f, warnings.catch_warnings():
        # The pixel limit below replaces PIL's own decompression-bomb warning.
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)
        with Image.open(f) as image:
            width, height = image.size      # from the header; nothing is decoded yet
            if width * height > MAX_IMAGE_PIXELS:
                raise ValueError(f'the header claims {width}x{height} pixels, more than the '
                                 f'limit of {MAX_IMAGE_PIXELS:,}')
            image.load()      # decode everything now, so truncated files fail here
            image = _to_rgb(ImageOps.exif_transpose(image))
    return image.resize((image_size, image_size), Image.Resampling.BILINEAR)


def encode_image(path, image_size):
    """``load_image`` as PNG bytes (what a dataset record stores)."""
    image = load_image(path, image_size)
    buffer = io.BytesIO()
    image.save(buffer, format='PNG')
    return buffer.getvalue()
