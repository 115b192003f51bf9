"""Input sizes: Global.img_size (and every img_size argument) is one integer S (an S x S image) or [H, W]."""
from .errors import UserError


def image_hw(size, what="img_size"):
    """(H, W) from S, [H, W] or (H, W); each a positive multiple of 16 (the T2T module reduces by 16)."""
    hw = (size, size) if isinstance(size, int) and not isinstance(size, bool) else tuple(size) \
        if isinstance(size, (list, tuple)) else None
    if hw is None or len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in hw):
        raise UserError(f"{what} {size!r} is neither an integer nor [height, width]")
    if any(v <= 0 or v % 16 for v in hw):
        raise UserError(f"{what} {size!r} is not a multiple of 16 (the T2T module reduces by 16)")
    return hw


def parse_size(text, what="--img-size"):
    """A command-line size: 'S', 'HxW', or the two words 'H W' (argparse nargs='+' gives a list)."""
    words = text if isinstance(text, (list, tuple)) else [text]
    words = [w for word in words for w in str(word).lower().split("x")]
    try:
        values = [int(w) for w in words]
    except ValueError:
        raise UserError(f"{what} {' '.join(map(str, text)) if isinstance(text, (list, tuple)) else text!r}: "
                        "give S, HxW or H W (integers)") from None
    return image_hw(values[0] if len(values) == 1 else values, what)
